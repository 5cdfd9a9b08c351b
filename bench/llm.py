"""Embedded chat LLM: time to first token and decode tokens/s, our runtime vs llama.cpp, same GGUF, same run.

    python -m bench.llm [--model qwen2.5-coder-0.5b-instruct] [--rounds 2] [--max-tokens 48]
                        [--variants bf16,int8] [--mtp K] [--llama-python PATH]

Our side is the service path: :class:`runtime.llm.torch_engine.TorchChatEngine` (scheduler thread,
detokenizer, output parser) on weights converted from the GGUF. llama.cpp (``llama-cpp-python``) runs the
GGUF itself in a worker process, fed the *same prompt ids* (our tokenizer equals llama.cpp's on the GGUF
vocabulary; tests check known ids). Both decode greedily, with 2 threads, and both reuse the longest
cached prompt prefix (llama.cpp's ``generate`` does; our engine does per slot), so TTFT is comparable.

``llama-cpp-python`` has no wheel on PyPI (sdist only, ~15 min to build on 2 cores), so it is not a
project dependency: the worker uses ``--llama-python`` / ``VOXLINE_LLAMA_PYTHON`` (an interpreter that
can ``import llama_cpp``), or this interpreter when it can. Without one, only our side is measured.
Variants run interleaved (prompt by prompt), because other jobs share this CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "What is the capital of France? Answer in one sentence.",
    "Give me two tips for sleeping better.",
    "Explain what a CPU does in two sentences.",
    "Write a short haiku about autumn.",
    "What is 17 times 3? Explain briefly.",
    "Name three animals that live in the ocean.",
]

LLAMA_WORKER = r'''
import json, sys, time
from llama_cpp import Llama
path, threads, ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    stop = set(job["stop_ids"])
    t0 = time.perf_counter(); first = None; out = []
    for tok in llm.generate(job["prompt"], temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        if first is None:
            first = time.perf_counter() - t0
        if tok in stop:
            break
        out.append(tok)
        if len(out) >= job["max_tokens"]:
            break
    total = time.perf_counter() - t0
    print(json.dumps({"ttft": first, "total": total, "tokens": out}), flush=True)
'''


def _llama_python(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("VOXLINE_LLAMA_PYTHON")):
        if cand:
            return cand
    try:
        import llama_cpp  # noqa: F401
        return sys.executable
    except ImportError:
        return None


class LlamaWorker:
    """llama.cpp in its own process (its own interpreter), one request at a time over JSON lines."""

    def __init__(self, python: str, gguf: Path, threads: int, ctx: int = 2048) -> None:
        self.script = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
        self.script.write(LLAMA_WORKER)
        self.script.close()
        self.proc = subprocess.Popen([python, self.script.name, str(gguf), str(threads), str(ctx)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline())
        assert ready.get("ready"), ready

    def run(self, prompt: list[int], max_tokens: int, stop_ids) -> dict:
        self.proc.stdin.write(json.dumps({"prompt": prompt, "max_tokens": max_tokens, "stop_ids": list(stop_ids)}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        os.unlink(self.script.name)


async def _ours(engine, request) -> dict:
    t0 = time.perf_counter()
    first = None
    text, last = [], None
    async for d in engine.stream(request):
        if first is None:
            first = time.perf_counter() - t0
        text.append(d.text)
        last = d
    return {"ttft": first, "total": time.perf_counter() - t0, "n": last.completion_tokens, "text": "".join(text)}


def _rate(r: dict) -> float:
    return (r["n"] - 1) / max(r["total"] - r["ttft"], 1e-9) if r["n"] > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    import torch

    from bench.common import machine, today
    from runtime.chat_api import ChatMessage, ChatRequest
    from runtime.llm.embedded import DEFAULT_LLM, gguf_path
    from runtime.llm.loader import load_torch_engine, mtp_weights_path
    from runtime.llm.torch_engine import EngineOptions

    ap = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_LLM)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the questions")
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="int8,bf16", help="ours: comma list of int8, bf16, fp32")
    ap.add_argument("--mtp", type=int, default=0, help="also run bf16 with K MTP drafts (needs trained weights)")
    ap.add_argument("--llama-python", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    engines = {}
    for v in [v for v in args.variants.split(",") if v]:
        t0 = time.perf_counter()
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "int8": torch.float32}[v]
        engines[f"ours-{v}"] = load_torch_engine(args.model, EngineOptions(slots=1, capacity=2048), dtype,
                                                 quant="int8" if v == "int8" else "none")
        print(f"[bench.llm] loaded ours-{v} in {time.perf_counter() - t0:.1f}s", flush=True)
    if args.mtp:
        engines[f"ours-bf16-mtp{args.mtp}"] = load_torch_engine(
            args.model, EngineOptions(slots=1, capacity=2048, n_draft=args.mtp), torch.bfloat16,
            mtp_path=mtp_weights_path(args.model))
        print(f"[bench.llm] loaded MTP K={args.mtp}", flush=True)
    any_engine = next(iter(engines.values()))
    tok = any_engine.tokenizer
    llama = None
    python = _llama_python(args.llama_python)
    if python:
        t0 = time.perf_counter()
        llama = LlamaWorker(python, gguf_path(args.model), args.threads)
        print(f"[bench.llm] llama.cpp worker ready in {time.perf_counter() - t0:.1f}s ({python})", flush=True)
    else:
        print("[bench.llm] llama.cpp: not available (pass --llama-python or set VOXLINE_LLAMA_PYTHON)")

    # One warm-up request each (first-call kernel setup is not what a user waits for in a running service).
    warm = ChatRequest(messages=(ChatMessage("user", "Hello!"),), temperature=0.0, max_tokens=4)
    for eng in engines.values():
        asyncio.run(_ours(eng, warm))
    if llama:
        llama.run(tok.encode_pieces(any_engine.format.render(warm.messages)), 4, tok.stop_ids)
    results: dict[str, list[dict]] = {k: [] for k in list(engines) + (["llama.cpp"] if llama else [])}
    same = {k: 0 for k in engines}
    qs = QUESTIONS[:args.questions]
    for rnd in range(args.rounds):
        for qi, q in enumerate(qs):
            # A fresh engine slot cache for every question: each engine reuses only the shared system
            # prompt prefix (as llama.cpp does) — repeated rounds use a varied suffix to stay comparable.
            suffix = "" if rnd == 0 else f" (round {rnd + 1})"
            req = ChatRequest(messages=(ChatMessage("user", q + suffix),), temperature=0.0,
                              max_tokens=args.max_tokens)
            texts = {}
            for name, eng in engines.items():
                r = asyncio.run(_ours(eng, req))
                results[name].append(r)
                texts[name] = r["text"]
                print(f"[bench.llm] r{rnd} q{qi} {name:16s} ttft {r['ttft']:.3f}s  {r['n']:3d} tok  "
                      f"{_rate(r):5.1f} tok/s", flush=True)
            if llama:
                prompt = tok.encode_pieces(any_engine.format.render(req.messages))
                lr = llama.run(prompt, args.max_tokens, tok.stop_ids)
                r = {"ttft": lr["ttft"], "total": lr["total"], "n": len(lr["tokens"]), "text": tok.decode(lr["tokens"])}
                results["llama.cpp"].append(r)
                for k, t in texts.items():
                    same[k] += t == r["text"]
                print(f"[bench.llm] r{rnd} q{qi} {'llama.cpp':16s} ttft {r['ttft']:.3f}s  {r['n']:3d} tok  "
                      f"{_rate(r):5.1f} tok/s", flush=True)
    # Prefill: a ~500-token user message that no engine has seen (only the system prompt is cached).
    long_q = ("Summarise this in one sentence: " + " ".join(
        f"Item {i}: the {w} train leaves platform {i % 7} at {8 + i % 12}:{(i * 7) % 60:02d}."
        for i, w in enumerate(["red", "blue", "green", "night", "early", "late", "express", "local"] * 3)))
    prefill: dict[str, tuple[int, float]] = {}
    req = ChatRequest(messages=(ChatMessage("user", long_q),), temperature=0.0, max_tokens=1)
    n_prompt = len(tok.encode_pieces(any_engine.format.render(req.messages)))
    for name, eng in engines.items():
        prefill[name] = (n_prompt, asyncio.run(_ours(eng, req))["ttft"])
    if llama:
        prefill["llama.cpp"] = (n_prompt, llama.run(tok.encode_pieces(any_engine.format.render(req.messages)),
                                                    1, tok.stop_ids)["ttft"])
    for name, (n, t) in prefill.items():
        print(f"[bench.llm] prefill {name:16s} {n} prompt tokens: TTFT {t:.3f}s", flush=True)
    if llama:
        llama.close()
    for name, eng in engines.items():
        eng.close()

    print()
    print("## LLM runtime")
    print()
    print(f"{today()}, {machine()}, shared with other jobs. Model `{args.model}` (the packaged GGUF; ours runs "
          f"the weights dequantised from it). Greedy, {args.max_tokens} new tokens max, {len(qs)} chat questions "
          f"x {args.rounds} round(s), 1 request at a time, torch/llama.cpp threads = {args.threads}.")
    print()
    print(f"| engine | TTFT median (s) | TTFT p90 (s) | decode tok/s (median) | decode tok/s (best) | tokens generated "
          f"| TTFT, unseen {n_prompt}-token prompt (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        ttft = sorted(r["ttft"] for r in rs)
        rates = [x for x in (_rate(r) for r in rs) if x == x]
        p90 = ttft[min(len(ttft) - 1, int(round(0.9 * (len(ttft) - 1))))]
        print(f"| {name} | {statistics.median(ttft):.3f} | {p90:.3f} | "
              f"{statistics.median(rates) if rates else float('nan'):.1f} | {max(rates, default=float('nan')):.1f} | "
              f"{sum(r['n'] for r in rs)} | "
              f"{prefill[name][1]:.2f} |")
    for name, eng in engines.items():
        st = eng.stats
        if eng.options.n_draft:
            print(f"\n{name}: {st['tokens'] / max(st['steps'], 1):.2f} tokens per decode step "
                  f"({st['tokens']} tokens, {st['steps']} steps)")
    if llama:
        n = len(results["llama.cpp"])
        print("\nGreedy answers identical to llama.cpp's: " + ", ".join(f"{k} {v}/{n}" for k, v in same.items())
              + " (ours runs the dequantised weights, llama.cpp the quantised blocks: near-ties can flip).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
