"""Tokenizer and vocoder on CPU: throughput, first-chunk latency, RTF (`python -m bench.tokenizer_vocoder`).

Measures, in one run (a couple of minutes, progress printed):
- the real linguistic stream (embedded Whisper base encoder + the trained k-means codebook), per
  utterance, as x real-time, and how well its codes separate sentences (same vs different, DTW);
- the tiny random-weight semantic stream / dual tokenizer streamed in 120 ms chunks, x real-time;
- the tiny random-weight vocoder: first-chunk latency and RTF, 1 and 8 slots; the full-size
  architecture with random weights (speed only); the hifigan-ts HiFi-GAN windowed, if its file is there.
Tiny-model figures are mechanics (cost of the code path), never speech quality.
Writes the `## Tokenizer and vocoder` section of bench/RESULTS.md (replacing an older one).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Tokenizer and vocoder"
DATE = "2026-11-23"
MACHINE = "2-core CPU, no GPU, shared with other jobs"
HELD_OUT = [
    "It is a beautiful morning, so let us walk to the park together.",
    "The printer on the third floor has run out of paper again.",
    "Remember to buy milk, eggs and a loaf of bread on your way home.",
    "Nobody expected the little team to win the championship this year.",
]


def log(msg: str) -> None:
    print(f"[bench.tokenizer_vocoder] {msg}", flush=True)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------------ tokenizer
def bench_whisper_stream(lines: list[str]) -> None:
    from tokenizer.codebook import NearestCentroidCodebook
    from tokenizer.codebook import dtw_agreement
    from tokenizer.speech_data import PiperSpeaker, load_real_clips
    from tokenizer.whisper_linguistic import WhisperFeatureEncoder, WhisperLinguisticTokenizer, default_codebook_path

    path = default_codebook_path()
    if path.exists():
        book = NearestCentroidCodebook.load(path)
        source = f"trained codebook `{path.name}` ({book.size} codes)"
    else:
        book = NearestCentroidCodebook(1024, 512)
        book.centroids.data.normal_()
        source = "NO trained codebook found (run `voxline train-codebook`): random 1024 centroids, speed only"
    clips = load_real_clips()
    seconds = sum(c.seconds for c in clips)
    lines.append(f"Real linguistic stream: Whisper base encoder (CTranslate2 int8) -> silence-baseline subtraction "
                 f"-> mean-pool 3 -> {source}. Per utterance, each padded to 30 s (the encoder is not causal).")
    lines.append("")
    lines.append("| linguistic stream (real) | audio | wall | x real-time |")
    lines.append("|---|---|---|---|")
    for threads in (1, 2):
        tok = WhisperLinguisticTokenizer(book, WhisperFeatureEncoder(threads=threads, batch=1))
        tok.encoder.baseline()  # one-time silent-window encode, not part of per-utterance cost
        tok.encode(clips[0].audio)  # warm-up
        log(f"Whisper linguistic stream, {len(clips)} clips ({seconds:.0f} s), {threads} thread(s)")
        _, wall = timed(tok.encode_batch, [c.audio for c in clips])
        lines.append(f"| {len(clips)} tests/data clips one by one, ct2 intra_threads={threads} | {seconds:.1f} s | "
                     f"{wall:.1f} s | {seconds / wall:.1f}x |")
    longest = max(clips, key=lambda c: c.seconds)
    _, wall = timed(tok.encode, longest.audio)
    lines.append(f"| longest clip ({longest.seconds:.1f} s = {-(-int(longest.seconds) // 30)} windows), 2 threads | "
                 f"{longest.seconds:.1f} s | {wall:.1f} s | {longest.seconds / wall:.1f}x |")
    lines.append("")
    if not path.exists():
        return
    log("code agreement: Piper held-out sentences read twice, and real clips vs Piper reading their transcript")
    speaker = PiperSpeaker()
    fast = [speaker.say(s, length_scale=0.9, noise_scale=0.5, noise_w_scale=0.6) for s in HELD_OUT]
    slow = [speaker.say(s, length_scale=1.2, noise_scale=0.8, noise_w_scale=0.9) for s in HELD_OUT]
    codes = tok.encode_batch(fast + slow)
    n = len(HELD_OUT)
    same = [dtw_agreement(codes[i], codes[n + i]) for i in range(n)]
    diff = [dtw_agreement(codes[i], codes[n + j]) for i, j in itertools.permutations(range(n), 2)]
    real = [c for c in clips if c.text and c.seconds < 12]
    real_codes = tok.encode_batch([c.audio for c in real])
    piper_codes = tok.encode_batch([speaker.say(c.text) for c in real])
    r_same = [dtw_agreement(a, b) for a, b in zip(real_codes, piper_codes)]
    r_diff = [dtw_agreement(real_codes[i], piper_codes[j]) for i, j in itertools.permutations(range(len(real)), 2)]
    lines.append("| code agreement (DTW-aligned fraction of equal codes) | same sentence | different sentences |")
    lines.append("|---|---|---|")
    lines.append(f"| Piper twice (rate 0.9 vs 1.2, different noise), {n} held-out sentences | "
                 f"{np.mean(same):.3f} (min {min(same):.3f}) | {np.mean(diff):.3f} (max {max(diff):.3f}) |")
    lines.append(f"| real recording vs Piper reading its transcript, {len(real)} clips | "
                 f"{np.mean(r_same):.3f} (min {min(r_same):.3f}) | {np.mean(r_diff):.3f} (max {max(r_diff):.3f}) |")
    lines.append("")


def bench_tiny_tokenizer(lines: list[str]) -> None:
    from bench.common import DATA, read
    from tokenizer.model import DualCodebookTokenizer

    tok = DualCodebookTokenizer.tiny()
    audio = torch.from_numpy(read(DATA / "moonshine" / "two_cities.wav"))  # 44 s
    seconds = audio.shape[0] / 16000
    lines.append("| tiny tokenizer (random weights, mechanics) | slots | audio per slot | wall | x real-time (all slots) |")
    lines.append("|---|---|---|---|---|")
    for label, run in (("semantic stream only", lambda x, st: tok.semantic(tok.semantic_mel(x, st.layers), st.layers)),
                       ("dual tokenizer (both streams + codebooks)", lambda x, st: tok(x, st))):
        for slots in (1, 8):
            x = audio[None].repeat(slots, 1)
            state = tok.init_state(slots)
            log(f"tiny {label}, {slots} slot(s), 120 ms chunks")
            start = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, x.shape[1] - 1919, 1920):
                    run(x[:, i:i + 1920], state)
            wall = time.perf_counter() - start
            lines.append(f"| {label}, 120 ms chunks | {slots} | {seconds:.1f} s | {wall:.2f} s | "
                         f"{slots * seconds / wall:.0f}x |")
    lines.append("")


# -------------------------------------------------------------------------------------- vocoder
def _stream_vocoder(voc, slots: int, groups: int, first: int, chunk: int) -> tuple[float, float]:
    """(first-chunk compute seconds, RTF over the whole stream) for `slots` sessions in one batch."""
    g = torch.Generator().manual_seed(0)
    ling = torch.randint(0, 1024, (slots, 2 * groups), generator=g)
    sem = torch.randint(0, 4096, (slots, 3 * groups), generator=g)
    state = voc.init_state(slots, torch.arange(slots))
    start = time.perf_counter()
    voc(ling[:, :2 * first], sem[:, :3 * first], state)
    first_s = time.perf_counter() - start
    for i in range(first, groups, chunk):
        voc(ling[:, 2 * i:2 * (i + chunk)], sem[:, 3 * i:3 * (i + chunk)], state)
    total = time.perf_counter() - start
    return first_s, total / (groups * 0.12)


def bench_vocoder(lines: list[str]) -> None:
    from vocoder.flow import FlowConfig, TokenToMel
    from vocoder.hifigan import Generator, GeneratorConfig
    from vocoder.model import StreamingVocoder

    lines.append("| vocoder | slots | first chunk (120 ms of tokens) compute | RTF (per slot-second) |")
    lines.append("|---|---|---|---|")
    tiny = StreamingVocoder.tiny()
    _stream_vocoder(tiny, 1, 4, 1, 4)  # warm-up
    for slots in (1, 8):
        log(f"tiny vocoder, {slots} slot(s), 10 s of tokens, first chunk 1 group then 4-group chunks")
        firsts, rtfs = zip(*(_stream_vocoder(tiny, slots, 84, 1, 4) for _ in range(3)))
        lines.append(f"| tiny, random weights, causal (mechanics) | {slots} | {1000 * np.median(firsts):.1f} ms | "
                     f"{np.median(rtfs) / slots:.4f} |")
    log("full-size architecture, random weights, 3 s of tokens")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        full = StreamingVocoder(TokenToMel(FlowConfig()).eval(), Generator(GeneratorConfig()).eval())
    _stream_vocoder(full, 1, 2, 1, 1)
    first, rtf = _stream_vocoder(full, 1, 25, 1, 4)
    lines.append(f"| full-size flow (512-d, 6 layers, 10 Euler steps) + HiFi-GAN V1 (512 ch), random weights, "
                 f"speed only | 1 | {1000 * first:.0f} ms | {rtf:.2f} |")
    ts_path = os.environ.get("VOXLINE_HIFIGAN_TS")
    if ts_path and Path(ts_path).exists():
        log("tiny flow + hifigan-ts HiFi-GAN (real weights), windowed with cross-fade")
        voc = StreamingVocoder.with_hifigan_torchscript(TokenToMel(FlowConfig.tiny()).eval(), ts_path)
        _stream_vocoder(voc, 1, 2, 1, 1)
        first, rtf = _stream_vocoder(voc, 1, 25, 1, 4)
        lines.append(f"| tiny flow + hifigan-ts HiFi-GAN (real 16 kHz weights from `VOXLINE_HIFIGAN_TS`, windowed: "
                     f"16 context frames, 10 ms cross-fade) | 1 | {1000 * first:.0f} ms | {rtf:.2f} |")
    lines.append("")


def write_section(lines: list[str]) -> None:
    section = "\n".join([HEADING, ""] + lines).rstrip() + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if HEADING in text:
        head, rest = text.split(HEADING, 1)
        nxt = rest.find("\n## ")
        text = head + section + (rest[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: 2 OpenMP threads on a shared 2-core box spin and stall
    start = time.perf_counter()
    lines = [f"Date {DATE}; machine: {MACHINE}; torch {torch.__version__} with 1 intra-op thread "
             "(with 2 threads the tiny models ran up to ~70x slower here while other jobs loaded both cores). "
             "Tiny-model rows are random weights: the cost of the code path (mechanics), not speech quality. "
             "Other jobs shared both cores during the run; repeat runs differed by up to ~2.5x, so compare "
             "rows within one run.", ""]
    try:
        bench_whisper_stream(lines)
        bench_tiny_tokenizer(lines)
        bench_vocoder(lines)
    finally:
        torch.set_num_threads(before)
    lines.append(f"Bench wall time {time.perf_counter() - start:.0f} s (`python -m bench.tokenizer_vocoder`).")
    print("\n".join([HEADING, ""] + lines))
    write_section(lines)
    log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
