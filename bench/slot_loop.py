"""Sessions as slots of one stepping loop vs one decode loop per session (issue 17 acceptance 3).

    .venv/bin/python -m bench.slot_loop            # ~1 minute on 2 cores
    .venv/bin/python -m bench.slot_loop --record   # ... and replace the section in bench/RESULTS.md

For N = 1, 4, 8 concurrent answers on the tiny unified preset (random weights, audio-constrained, MTP k=3 as
the realtime path runs it), the same prompts are decoded two ways in the same run:

- **shared**: one `SlotLoop` over one engine of 8 slots (what every realtime session uses now);
- **per session**: N `SlotLoop`s of one slot each, N threads (the old design: a `DecodeEngine(batch=1)` and
  its own forward loop per session).

Reported: the shared loop's time per step (a step advances every live slot), and the aggregate answer ids/s
of both, whose ratio is the gain. Mechanics only: the weights are random.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from bench.common import machine, today
from runtime.audio_decoding import AudioChatFormat, AudioOnlyDrafter, AudioOnlyLM, AudioPhaseConstraint
from runtime.engine import DecodeEngine
from runtime.presets import build_tiny
from runtime.slot_loop import Generation, SlotLoop
from voxcore.interleave import AudioTokenLayout, interleave

HEADING = "## Shared stepping loop (`bench/slot_loop.py`)"
FMT = AudioChatFormat()
SLOTS = 8


def make_loop(model, batch: int, n_draft: int) -> SlotLoop:
    c = AudioPhaseConstraint(model, FMT, batch=batch)
    engine = DecodeEngine(AudioOnlyLM(model, c), batch=batch, capacity=512, n_draft=n_draft,
                          drafter=AudioOnlyDrafter(c))
    return SlotLoop(engine, c, name=f"bench-loop-{batch}")


def prompt(model, seed: int, groups: int = 8) -> list[int]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    ling = torch.randint(0, cfg.linguistic_size, (2 * groups,), generator=g)
    sem = torch.randint(0, cfg.semantic_size, (3 * groups,), generator=g)
    ids = interleave(ling, sem, AudioTokenLayout(cfg.audio_offset, cfg.linguistic_size, cfg.semantic_size))
    return [FMT.user, *ids.tolist(), FMT.end, FMT.assistant]


def run(loops: list[SlotLoop], prompts: list[list[int]], new_ids: int) -> float:
    """Submit prompt i to loop i % len(loops); wall seconds until every answer is done."""
    done = [threading.Event() for _ in prompts]
    t0 = time.perf_counter()
    for i, p in enumerate(prompts):
        loops[i % len(loops)].submit(Generation(p, lambda ids: None, lambda r, e=done[i]: e.set(), max_new=new_ids))
    for e in done:
        e.wait()
    return time.perf_counter() - t0


def measure(sessions: int, new_ids: int, n_draft: int, repeats: int) -> dict:
    model = build_tiny()
    prompts = [prompt(model, seed=s) for s in range(sessions)]
    shared = make_loop(model, SLOTS, n_draft)
    separate = [make_loop(model, 1, n_draft) for _ in range(sessions)]
    run([shared], prompts[:1], 8)  # warm-up both paths (first-call allocations)
    run(separate[:1], prompts[:1], 8)
    t_shared = t_sep = 0.0
    steps = 0
    for r in range(repeats):  # alternate the order so background load hits both alike
        s0 = shared.steps
        if r % 2 == 0:
            t_shared += run([shared], prompts, new_ids)
            t_sep += run(separate, prompts, new_ids)
        else:
            t_sep += run(separate, prompts, new_ids)
            t_shared += run([shared], prompts, new_ids)
        steps += shared.steps - s0
    for loop in [shared, *separate]:
        loop.close()
    total = sessions * new_ids * repeats
    return {"sessions": sessions, "step_ms": 1000 * t_shared / steps, "shared_ids_s": total / t_shared,
            "separate_ids_s": total / t_sep, "gain": t_sep / t_shared}


def table(rows: list[dict], new_ids: int, n_draft: int) -> str:
    lines = [f"### {today()}, {machine()}",
             f"Tiny unified preset (random weights), audio-constrained, MTP k={n_draft}, {new_ids} answer ids per "
             f"session, torch threads {torch.get_num_threads()}; shared = one loop of {SLOTS} slots, per session = "
             "one batch-1 loop and thread each.", "",
             "| sessions | shared: ms per step | shared: answer ids/s | per-session loops: ids/s | gain |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sessions']} | {r['step_ms']:.1f} | {r['shared_ids_s']:.0f} | {r['separate_ids_s']:.0f} "
                     f"| {r['gain']:.2f}× |")
    return "\n".join(lines) + "\n"


def record(section: str) -> None:
    from pathlib import Path

    path = Path(__file__).with_name("RESULTS.md")
    text = path.read_text()
    block = f"{HEADING}\n\n{section}"
    if HEADING in text:
        head, _, rest = text.partition(HEADING)
        nxt = rest.find("\n## ")
        text = head + block + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-ids", type=int, default=150)
    ap.add_argument("--n-draft", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for n in (1, 4, 8):
        rows.append(measure(n, args.new_ids, args.n_draft, args.repeats))
        print(rows[-1], flush=True)
    section = table(rows, args.new_ids, args.n_draft)
    print(section)
    if args.record:
        record(section)


if __name__ == "__main__":
    main()
