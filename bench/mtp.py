"""MTP decoding mechanics: tokens accepted per verify step and wall-clock speed-up vs plain greedy.

    .venv/bin/python -m bench.mtp                 # ~5 minutes: (a) random heads, train, (b) trained heads
    .venv/bin/python -m bench.mtp --record        # ... and append the figures to bench/RESULTS.md

Both rows use the ``bench`` preset backbone (random weights, fixed seed) and the same prompts, decoded
one session at a time (batch 1) by plain greedy decoding and by MTP decoding with k drafts, in the
same run; plain and MTP runs alternate prompt by prompt so background load hits both alike. Every
MTP output is checked token-identical to plain. (b) trains the heads with ``runtime.train_mtp``
(self-distillation from the backbone's own greedy continuations) for ``--train-seconds``.

These are mechanics on random / self-distilled tiny models, not speech quality.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from runtime.checkpoint import load_mtp, save_mtp
from runtime.engine import DecodeEngine
from runtime.generate import generate
from runtime.presets import BENCH_INIT_STD, bench_config, build_bench
from runtime.train_mtp import TrainMTPConfig, pass_through_init, random_prompts, train_mtp

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## MTP decoding (runtime, tiny models)"


def continuation_stats(seqs: list[list[int]]) -> dict[str, float]:
    """How predictable the backbone's greedy continuations are: immediate repeats, and how often the
    next token equals the one that followed the previous occurrence of the current token."""
    rep = sum(a == b for s in seqs for a, b in zip(s, s[1:])) / max(sum(len(s) - 1 for s in seqs), 1)
    hits = seen = 0
    for s in seqs:
        last: dict[int, int] = {}
        for i in range(len(s) - 1):
            if s[i] in last:
                seen += 1
                hits += s[last[s[i]] + 1] == s[i + 1]
            last[s[i]] = i
    distinct = sum(len(set(s)) / len(s) for s in seqs) / len(seqs)
    return {"repeat": rep, "copy": hits / max(seen, 1), "distinct": distinct}


def measure(model, prompts, new_tokens: int, ks: list[int], log) -> dict:
    """Plain vs MTP(k) on every prompt, alternating the order; returns totals per k."""
    cap = max(map(len, prompts)) + new_tokens + 2 * max(ks) + 4
    plain_eng = DecodeEngine(model, batch=1, capacity=cap, n_draft=0)
    engines = {k: DecodeEngine(model, batch=1, capacity=cap, n_draft=k) for k in ks}
    t_plain = 0.0
    tot = {k: {"time": 0.0, "steps": 0, "tokens": 0, "identical": True} for k in ks}
    plain_out = []
    for i, p in enumerate(prompts):
        order = ["plain"] + ks if i % 2 == 0 else ks[::-1] + ["plain"]
        outs = {}
        for which in order:
            eng = plain_eng if which == "plain" else engines[which]
            t0 = time.perf_counter()
            r = generate(eng, [p], max_new_tokens=new_tokens)
            dt = time.perf_counter() - t0
            outs[which] = r
            if which == "plain":
                t_plain += dt
            else:
                tot[which]["time"] += dt
                tot[which]["steps"] += r.slot_steps
                tot[which]["tokens"] += r.step_tokens
        plain_out.append(p + outs["plain"].tokens[0])
        for k in ks:
            tot[k]["identical"] &= outs[k].tokens == outs["plain"].tokens
        log(f"  prompt {i + 1}/{len(prompts)}: " + ", ".join(
            f"k={k} {outs[k].tokens_per_step:.2f} tok/step" for k in ks))
    n_tok = len(prompts) * new_tokens
    rows = {k: {"tokens_per_step": v["tokens"] / max(v["steps"], 1),
                "speedup": t_plain / v["time"], "ms_per_token": 1000 * v["time"] / n_tok,
                "identical": v["identical"]} for k, v in tot.items()}
    return {"plain_ms_per_token": 1000 * t_plain / n_tok, "rows": rows, "sequences": plain_out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mtp", description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--ks", default="1,2,3", help="draft counts to measure")
    ap.add_argument("--train-seconds", type=float, default=180.0, help="train-mtp budget, data included")
    ap.add_argument("--train-sequences", type=int, default=192, help="self-distillation pool size")
    ap.add_argument("--lr", type=float, default=TrainMTPConfig.lr)
    ap.add_argument("--init-std", type=float, default=BENCH_INIT_STD, help="backbone random init std")
    ap.add_argument("--mtp", default=None, help="use these trained MTP weights instead of training")
    ap.add_argument("--save-mtp", default=None, help="write the trained MTP weights here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared CPU)")
    ap.add_argument("--record", action="store_true", help=f"append the figures to {RESULTS}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    log = lambda s: print(s, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    cfg = bench_config()
    log(f"[bench.mtp] backbone: bench preset, {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"vocab {cfg.vocab_size}, {cfg.n_mtp} MTP modules, random init std {args.init_std}")
    model = build_bench(init_std=args.init_std)
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    n_mtp = sum(p.numel() for p in model.mtp.parameters())
    prompts = random_prompts(cfg.vocab_size, args.prompts, (4, 24), seed=20261123)

    log("[bench.mtp] (a) random MTP heads")
    res_a = measure(model, prompts, args.new_tokens, ks, log)
    stats = continuation_stats([s[-args.new_tokens:] for s in res_a["sequences"]])
    log(f"[bench.mtp] greedy continuations: repeat {stats['repeat']:.2f}, copy-predictable "
        f"{stats['copy']:.2f}, distinct fraction {stats['distinct']:.2f}")
    # The warm start alone, untrained: shows how much of (b) the "repeat the token" prior explains.
    log("[bench.mtp] (a') pass-through warm start, untrained")
    pass_through_init(model)
    res_w = measure(model, prompts, args.new_tokens, ks, log)
    if args.mtp:
        load_mtp(model, args.mtp)
        summary = {"steps": "?", "total_seconds": 0.0, "accuracy": []}
        log(f"[bench.mtp] (b) loaded MTP heads from {args.mtp}")
    else:
        log(f"[bench.mtp] training MTP heads for {args.train_seconds:.0f}s (self-distillation)")
        summary = train_mtp(model, TrainMTPConfig(max_seconds=args.train_seconds, lr=args.lr,
                                                  n_sequences=args.train_sequences), log=log)
        if args.save_mtp:
            save_mtp(model, args.save_mtp)
    log("[bench.mtp] (b) trained MTP heads")
    res_b = measure(model, prompts, args.new_tokens, ks, log)

    lines = ["| heads | k | tokens / verify step | plain ms/token | MTP ms/token | speed-up | identical |",
             "|---|---|---|---|---|---|---|"]
    groups = (("(a) random", res_a), ("(a') warm start, untrained", res_w), ("(b) self-distilled", res_b))
    for name, res in groups:
        for k, r in res["rows"].items():
            lines.append(f"| {name} | {k} | {r['tokens_per_step']:.2f} | {res['plain_ms_per_token']:.1f} | "
                         f"{r['ms_per_token']:.1f} | {r['speedup']:.2f}x | {'yes' if r['identical'] else 'NO'} |")
    table = "\n".join(lines)
    log("\n" + table)
    log(f"[bench.mtp] done in {time.perf_counter() - t_start:.0f}s")
    if args.record:
        record(table, cfg, stats, summary, args, n_params, n_mtp)
    return 0 if all(r["identical"] for _, res in groups for r in res["rows"].values()) else 1


def record(table, cfg, stats, summary, args, n_params, n_mtp) -> None:
    """Append this run's section to bench/RESULTS.md (other sections are left alone)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    train = (f"{summary['steps']} steps in {summary['total_seconds']:.0f}s including data generation "
             f"({args.train_sequences} greedy continuations of random prompts, 128 tokens each), batch 8, "
             f"lr {args.lr:g}, bf16 autocast" if summary.get("total_seconds") else f"loaded from {args.mtp}")
    section = f"""
{HEADING}

Mechanics on **random / self-distilled tiny models — not speech quality.** Machine: 2-core CPU
(AMD EPYC, AVX-512), no GPU, shared with other jobs (load average 4-6 during the run); torch
{torch.__version__}, {args.threads} thread; Python {platform.python_version()}. Date: 2026-11-23.
Command: `.venv/bin/python -m bench.mtp --record` (`--prompts {args.prompts} --new-tokens {args.new_tokens}
--init-std {args.init_std}`).

- Backbone: `bench` preset — {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads /
  {cfg.n_kv_heads} KV heads, SwiGLU {cfg.ffn_dim}, tied embeddings, joint vocab {cfg.vocab_size}
  ({cfg.text_vocab_size} text + {cfg.linguistic_size} linguistic + {cfg.semantic_size} semantic),
  {n_params / 1e6:.1f} M parameters, random weights (seed 1234, std {args.init_std}), float32;
  {cfg.n_mtp} MTP modules, {n_mtp / 1e6:.1f} M parameters (plus the shared embedding / head).
- Its greedy continuations of the bench prompts: the next token repeats the current one
  {stats['repeat']:.0%} of the time; it equals the token that followed the previous occurrence of the
  current token {stats['copy']:.0%} of the time; distinct-token fraction {stats['distinct']:.2f}. A random
  backbone is neither language nor speech: these numbers, not the MTP code, set how many drafts can
  be right.
- (a) random MTP heads. (a') the `train_mtp` warm start (each module passes its input token's
  embedding through, i.e. drafts "the same token again"), untrained. (b) `train_mtp`
  self-distillation from that warm start, backbone frozen: {train}.
- Batch 1 (one session), {args.prompts} random prompts (4–24 ids) x {args.new_tokens} new tokens, greedy;
  plain and MTP runs alternate prompt by prompt in one process. "identical": MTP output == plain
  output on every prompt. Speed-up = plain time / MTP time for the same tokens.

{table}
"""
    RESULTS.write_text(text.rstrip("\n") + "\n" + section)
    print(f"[bench.mtp] appended to {RESULTS}")


if __name__ == "__main__":
    raise SystemExit(main())
