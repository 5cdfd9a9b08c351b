"""The embedded chat LLM on its two engines, in one run: llama.cpp (``xllamacpp``, the GGUF as it is) and our torch
engine (weights dequantised to bf16), same prompts, 1 and 4 concurrent requests.

    python -m bench.llm_engines [--model qwen2.5-coder-0.5b-instruct] [--rounds 2] [--max-tokens 48]
                                [--concurrency 1,4] [--engines llamacpp,torch]
    .venv-vllm/bin/python -m bench.llm_engines --engines vllm,llamacpp,torch      # vLLM too (runtime/llm/vllm_engine.py)

Both are measured through the ``ChatEngine`` interface the server uses (prompt rendering, detokenizer, output
parser included), greedy, every engine with 4 slots and all of this machine's cores. TTFT = from calling
``stream()`` to the first text; decode tok/s per request = tokens after the first / time after the first;
aggregate tok/s = all tokens of a batch / its wall time. Engines are interleaved batch by batch, because other
jobs share this CPU; both reuse cached prompt prefixes (the system prompt) as they do in service.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.common import machine, pct, today
from bench.llm import QUESTIONS


def load(name: str, model: str):
    from runtime.llm.loader import load_llamacpp_engine, load_torch_engine
    from runtime.llm.torch_engine import EngineOptions

    options = EngineOptions(slots=4, capacity=2048)
    if name == "vllm":             # run from .venv-vllm (`make vllm-venv`), where vLLM and the other two are installed
        from runtime.llm.embedded import checkpoint_dir
        from runtime.llm.vllm_engine import VLLMChatEngine
        return VLLMChatEngine(model, checkpoint_dir(model), options)
    return load_llamacpp_engine(model, options) if name == "llamacpp" else load_torch_engine(model, options)


async def one(engine, question: str, max_tokens: int) -> dict:
    from runtime.chat_api import ChatMessage, ChatRequest

    req = ChatRequest(messages=(ChatMessage("user", question),), temperature=0.0, max_tokens=max_tokens)
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    async for d in engine.stream(req):
        now = time.perf_counter()
        if first is None and (d.text or d.tool_call):
            first = now
        if d.finish_reason is not None:
            last, tokens = now, d.completion_tokens
    first = first or last
    return {"ttft": first - t0, "tokens": tokens,
            "tok_s": (tokens - 1) / (last - first) if tokens > 1 and last > first else None}


async def batch(engine, questions: list[str], max_tokens: int) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    rows = await asyncio.gather(*(one(engine, q, max_tokens) for q in questions))
    return rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--engines", default="llamacpp,torch")
    args = ap.parse_args()
    names = args.engines.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]

    engines = {}
    for name in names:
        t0 = time.perf_counter()
        engines[name] = load(name, args.model)
        print(f"loaded {name} in {time.perf_counter() - t0:.1f} s", flush=True)
        asyncio.run(one(engines[name], "Say hello.", 8))                  # warm-up

    results = {(n, c): {"rows": [], "agg": []} for n in names for c in levels}
    for r in range(args.rounds):
        for c in levels:
            groups = [QUESTIONS[i:i + c] for i in range(0, len(QUESTIONS), c)]
            for group in groups:
                for name in names:
                    rows, wall = asyncio.run(batch(engines[name], group, args.max_tokens))
                    results[name, c]["rows"] += rows
                    results[name, c]["agg"].append(sum(x["tokens"] for x in rows) / wall)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    print(f"\n{today()}; {machine()}; model {args.model}; greedy, at most {args.max_tokens} new tokens, "
          f"{len(QUESTIONS)} questions x {args.rounds} rounds")
    print("| engine | concurrent | TTFT median (s) | TTFT p90 (s) | decode tok/s per request (median) "
          "| aggregate tok/s (median) | tokens |")
    print("|---|---|---|---|---|---|---|")
    for (name, c), res in results.items():
        rows = res["rows"]
        rates = [x["tok_s"] for x in rows if x["tok_s"]]
        print(f"| {name} | {c} | {statistics.median(x['ttft'] for x in rows):.3f} | "
              f"{pct([x['ttft'] for x in rows], 90):.3f} | {statistics.median(rates):.1f} | "
              f"{statistics.median(res['agg']):.1f} | {sum(x['tokens'] for x in rows)} |")
    for e in engines.values():
        e.close()


if __name__ == "__main__":
    main()
