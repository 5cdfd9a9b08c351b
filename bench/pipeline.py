"""End-to-end tiny unified pipeline through the realtime session code: first audio out and RTF, MTP k=0 vs k=3.

    .venv/bin/python -m bench.pipeline              # 5 rounds x 3 clips x (k=0, k=3), prints the section
    .venv/bin/python -m bench.pipeline --record     # ... and writes it into bench/RESULTS.md

Each turn is `realtime.unified_turn.run_turn`: a `RealtimeSession` + `SessionRunner` exactly as behind
`/v1/realtime` with the transport replaced by a list; the "client" appends a real recording (24 kHz
pcm16, 40 ms appends), commits, and sends `response.create`. First audio = commit sent → first
`response.output_audio.delta` out of the session (tokenizer flush, prompt prefill, one 120 ms group of
decoding, the first vocoder chunk, resampling and serialization). RTF (compute) = decode + vocoder time
per second of answer audio; RTF (wall) = commit → `response.done` per second of answer audio (pacing
off: `lead_ms` 10 s). k=0 and k=3 alternate turn by turn so background load hits both alike; greedy, and
every k=3 answer is checked sample-identical to k=0's.

The models are the `tiny` preset with random weights: the figures measure the plumbing, not speech.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import DATA, read
from realtime.unified_pipeline import UnifiedOptions, UnifiedStack
from realtime.unified_turn import LocalModels, run_turn

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## End-to-end tiny pipeline (mechanics, not quality)"
DATE, MACHINE = "2026-11-23", "2-core CPU, no GPU, shared with other jobs"
CLIPS = ["commands/goforward.wav", "librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
         "librivox/sense_and_sensibility_01_austen_64kb-0930.wav"]


def log(msg: str) -> None:
    print(f"[bench.pipeline] {msg}", flush=True)


def measure(stack: UnifiedStack, ks: list[int], rounds: int, realtime_input: bool) -> tuple[dict, float]:
    clips = [read(DATA / c) for c in CLIPS]
    models = {k: LocalModels(stack.with_options(n_draft=k)) for k in ks}
    for k in ks:  # warm-up: first-call costs of torch and soxr are not part of a turn
        asyncio.run(run_turn(models[k], clips[0][:16000], session_id="sess_warmup"))
    rows = {k: {"first": [], "encoded": [], "rtf": [], "wall": [], "steps": 0, "step_tokens": 0, "llm_s": 0.0,
                "tokens": 0, "audio_s": 0.0, "identical": True} for k in ks}
    turn = 0
    for r in range(rounds):
        for c, audio in enumerate(clips):
            order = ks if turn % 2 == 0 else ks[::-1]
            turn += 1
            out = {}
            for k in order:
                res = asyncio.run(run_turn(models[k], audio, realtime_input=realtime_input,
                                           session_id=f"sess_{r}_{c}_{k}"))
                assert res.done["response"]["status"] == "completed", res.done
                st, row = res.stats, rows[k]
                row["first"].append(res.first_audio_s)
                row["encoded"].append(res.encoded_s)
                row["rtf"].append(st.rtf)
                row["wall"].append(res.done_s / res.audio_s)
                row["steps"] += st.steps
                row["step_tokens"] += st.step_tokens
                row["llm_s"] += st.llm_s
                row["tokens"] += st.audio_tokens
                row["audio_s"] += res.audio_s
                out[k] = res.audio
            for k in ks:
                rows[k]["identical"] &= out[k] == out[ks[0]]
            log(f"{'real-time' if realtime_input else 'fast'} input, round {r + 1}/{rounds}, "
                f"{CLIPS[c].split('/')[-1]}: " + ", ".join(
                f"k={k} first {1000 * rows[k]['first'][-1]:.0f} ms RTF {rows[k]['rtf'][-1]:.3f}" for k in ks))
    return rows, sum(len(a) for a in clips) / 16000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ks", default="0,3", help="MTP draft counts to compare")
    ap.add_argument("--max-tokens", type=int, default=150, help="answer length in audio tokens")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 suits the tiny models)")
    ap.add_argument("--record", action="store_true", help=f"write the section into {RESULTS}")
    args = ap.parse_args(argv)
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    start = time.perf_counter()
    try:
        stack = UnifiedStack.tiny(options=UnifiedOptions(max_audio_tokens=args.max_tokens))
        runs = {mode: measure(stack, ks, args.rounds, mode == "real time") for mode in ("real time", "fast")}
    finally:
        torch.set_num_threads(before)
    lm = stack.lm.config
    rows, input_s = runs["real time"]
    turns = len(rows[ks[0]]["first"])
    lines = [
        f"Date {DATE}; machine: {MACHINE}; torch {torch.__version__}, {args.threads} intra-op thread; Python "
        f"{platform.python_version()}. **Random tiny weights: these figures measure the plumbing (the session "
        "code, tokenizer, LLM decode loop, vocoder and output path), not speech quality** — the answers are "
        "noise-like audio from untrained models.",
        "",
        f"- Path: `realtime.unified_turn.run_turn` — `RealtimeSession` + `SessionRunner` as behind `/v1/realtime`, "
        "transport replaced by a list. Input: real recordings from tests/data "
        f"({', '.join(c.split('/')[-1] for c in CLIPS)}; {input_s:.1f} s together) sent as 24 kHz pcm16 in 40 ms "
        "appends — at real-time speed, as a microphone sends them, or as fast as possible (a file) — encoded by "
        "the tiny dual-codebook tokenizer while appended, then a manual commit + `response.create`.",
        f"- Models (`tiny` preset, random weights): tokenizer (2+2 layers, d 32), audio LLM ({lm.n_layers} layers, "
        f"d_model {lm.d_model}, joint vocab {lm.vocab_size}, {lm.n_mtp} MTP modules, float32), vocoder (tiny flow "
        "+ causal HiFi-GAN, 16 kHz). Answers: greedy, constrained to audio ids in group order, "
        f"{args.max_tokens} tokens = {args.max_tokens // 5 * 0.12:.1f} s each (a random model never emits the "
        "end id); vocoder chunks of 1 group first, then 4.",
        f"- {args.rounds} rounds x {len(CLIPS)} clips = {turns} turns per k, k alternating turn by turn, after one "
        "warm-up turn per k. Medians over turns. First audio = commit sent → first audio delta out of the "
        "session; \"turn encoded\" = commit sent → the turn's ids stored. RTF (compute) = (LLM + vocoder) "
        "seconds / answer seconds; RTF (wall) = commit → `response.done` / answer seconds, pacing off.",
        "",
        "| input appends | MTP k | turns | first audio, median (p90) | of which: turn encoded | RTF compute, median "
        "| RTF wall, median | tokens / verify step | LLM ms / token | audio identical to k=0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, (rows, _) in runs.items():
        for k in ks:
            r = rows[k]
            first = np.array(r["first"]) * 1000
            lines.append(f"| {mode} | {k} | {turns} | {np.median(first):.0f} ms ({np.percentile(first, 90):.0f} ms) | "
                         f"{1000 * np.median(r['encoded']):.0f} ms | "
                         f"{np.median(r['rtf']):.3f} | {np.median(r['wall']):.3f} | "
                         f"{r['step_tokens'] / max(r['steps'], 1):.2f} | {1000 * r['llm_s'] / r['tokens']:.2f} | "
                         f"{'yes' if r['identical'] else 'NO'} |")
    lines += [
        "",
        "Reading the rows: with real-time input the tokenizer keeps up with the appends, so at commit only the "
        "last partial group and the flush remain; appended as fast as possible, the whole turn is still being "
        "encoded at commit (the tiny tokenizer runs ~28x real time here, see the tokenizer section), which "
        "then dominates the first-audio time. The MTP heads are random too, so no draft is ever accepted "
        "(1.00 tokens per verify step) and k=3 only adds the cost of 3 MTP blocks + 3 output-head passes per step over a 2-layer "
        "backbone — slower per token, same audio (greedy MTP is exact). Acceptance needs trained heads on a "
        "trained backbone (see the MTP section for self-distilled heads on the `bench` backbone). "
        f"Bench wall time {time.perf_counter() - start:.0f} s (`python -m bench.pipeline`).",
    ]
    section = "\n".join([HEADING, ""] + lines) + "\n"
    print("\n" + section)
    if args.record:
        write_section(section)
        log(f"wrote {RESULTS}")
    return 0 if all(rows[k]["identical"] for rows, _ in runs.values() for k in ks) else 1


def write_section(section: str) -> None:
    """Replace this bench's section of RESULTS.md (or append it); other sections are left alone."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if HEADING in text:
        head, rest = text.split(HEADING, 1)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
