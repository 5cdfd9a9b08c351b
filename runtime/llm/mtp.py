"""MTP modules for an embedded chat LLM, trained briefly by self-distillation (backbone frozen).

    python -m runtime.llm.mtp --model qwen2.5-coder-0.5b-instruct [--depth 1] [--seconds 600]

The packaged GGUF models have no MTP weights, so we add ``depth`` DeepSeek-V3-style modules
(:class:`runtime.model.MTPModule`) and train only them: data are the model's own greedy answers to chat
prompts (real text, rendered with the chat template — not random ids, which a real LLM continues with
nonsense), targets are the backbone's argmax at every position, exactly what the greedy verifier
accepts. Module ``k`` starts from a copy of the backbone's last block with ``eh_proj`` passing the hidden
state through, so it starts as a cheap "one more layer" and only has to learn the shift by ``k``.

Loss is computed on a random subset of positions per step: the shared output head (151,936 x 896 for
Qwen2.5) dominates the cost on a CPU, not the one-block module. Weights go to
:func:`runtime.llm.loader.mtp_weights_path` (``safetensors``, metadata ``n_mtp``) and are used with
``VOXLINE_LLM_MTP=K``; decoding stays token-identical to plain greedy (the verifier guarantees it).
"""
from __future__ import annotations

import argparse
import random
import time
from typing import Callable

import torch
import torch.nn.functional as F

from runtime.model import AudioLM

TOPICS = ["the moon", "coffee", "volcanoes", "the French revolution", "a healthy breakfast", "bicycles",
          "photosynthesis", "the internet", "learning a language", "rain", "the Roman empire", "chess",
          "electric cars", "sleep", "honey bees", "the ocean", "jazz music", "gravity", "a good password",
          "recycling", "mountains", "the human heart", "trains", "friendship", "solar panels", "Paris"]
TEMPLATES = ["Tell me about {}.", "Explain {} to a child.", "Give me three facts about {}.",
             "Write a short paragraph about {}.", "Why is {} important?", "What should I know about {}?"]


def chat_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(TEMPLATES).format(rng.choice(TOPICS)) for _ in range(n)]


def with_mtp(base: AudioLM, depth: int) -> AudioLM:
    """A copy of ``base`` (sharing its tensors) with ``depth`` MTP modules initialised as described."""
    model = AudioLM(base.config.replace(n_mtp=depth))
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("mtp.") for k in missing), (missing, unexpected)
    last = base.model.layers[-1]
    d = base.config.d_model
    with torch.no_grad():
        for m in model.mtp:
            m.block.load_state_dict(last.state_dict())
            m.eh_proj.weight.zero_()
            m.eh_proj.weight[:, :d].copy_(torch.eye(d))
            m.norm.weight.copy_(base.model.norm.weight)
    return model.to(next(base.parameters()).dtype).eval()


@torch.no_grad()
def build_pool(model: AudioLM, tokenizer, fmt, n: int, new_tokens: int, log: Callable[[str], None],
               batch: int = 8, seed: int = 0) -> list[list[int]]:
    """Prompt + greedy answer token ids for ``n`` chat prompts (plain decoding, our engine)."""
    from runtime.chat_api import ChatMessage
    from runtime.engine import DecodeEngine
    from runtime.generate import generate

    prompts = [tokenizer.encode_pieces(fmt.render([ChatMessage("user", q)])) for q in chat_prompts(n, seed)]
    cap = max(map(len, prompts)) + new_tokens + 8
    engine = DecodeEngine(model, batch=batch, capacity=cap)
    seqs, t0 = [], time.perf_counter()
    for i in range(0, n, batch):
        chunk = prompts[i:i + batch]
        out = generate(engine, chunk, max_new_tokens=new_tokens, stop_ids=tokenizer.stop_ids)
        seqs += [p + o for p, o in zip(chunk, out.tokens)]
        log(f"[llm-mtp] pool {len(seqs)}/{n} ({time.perf_counter() - t0:.0f}s)")
    return seqs


def train(model: AudioLM, seqs: list[list[int]], seconds: float, steps: int, lr: float, positions: int,
          log: Callable[[str], None], seed: int = 0) -> dict:
    """Train ``model.mtp`` (float32) on the pool; returns per-depth accuracy on the last batches."""
    depth = model.config.n_mtp
    gen = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    for m in model.mtp:
        m.float().requires_grad_(True)
    params = [p for m in model.mtp for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    head = model.lm_head.weight
    t0, step, accs = time.perf_counter(), 0, []
    # Backbone hidden states and argmax targets once per sequence (the backbone is frozen).
    cache = []
    with torch.no_grad():
        for s in seqs:
            tok = torch.tensor(s)[None]
            h = model(tok)                                                     # [1, T, D]
            cache.append((tok, h.float(), model.logits(h).argmax(-1)))
    log(f"[llm-mtp] hidden states for {len(seqs)} sequences ({time.perf_counter() - t0:.0f}s)")
    while step < steps and time.perf_counter() - t0 < seconds:
        i = int(torch.randint(len(cache), (1,), generator=gen))
        tok, h, tgt = cache[i]
        g, loss, acc = h, 0.0, []
        for k in range(depth):
            length = tok.shape[1] - k - 1
            if length <= 1:
                break
            pos = torch.arange(length)[None]
            g = model.mtp_forward(k, g[:, :length], tok[:, k + 1:k + 1 + length], pos)   # [1, L, D]
            pick = torch.randperm(length, generator=gen)[:positions]
            hn = model.mtp[k].norm(g[0, pick])                                           # [P, D]
            logits = F.linear(hn, head.float())                                          # [P, V]
            target = tgt[0, k + 1:k + 1 + length][pick]
            loss = loss + F.cross_entropy(logits, target)
            acc.append((logits.argmax(-1) == target).float().mean().item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        accs.append(acc)
        if step % 10 == 0 or step == 1:
            recent = [sum(a[k] for a in accs[-10:]) / len(accs[-10:]) for k in range(len(acc))]
            log(f"[llm-mtp] step {step} loss {loss.item():.3f} acc/depth "
                + " ".join(f"{a:.2f}" for a in recent) + f" ({time.perf_counter() - t0:.0f}s)")
    model.requires_grad_(False)
    recent = [sum(a[k] for a in accs[-20:]) / max(len(accs[-20:]), 1) for k in range(depth)] if accs else []
    return {"steps": step, "seconds": time.perf_counter() - t0, "accuracy": recent}


def main(argv: list[str] | None = None) -> int:
    from runtime.checkpoint import load_checkpoint, save_mtp
    from runtime.llm.chat_format import chat_format
    from runtime.llm.embedded import DEFAULT_LLM, checkpoint_dir, spec
    from runtime.llm.loader import mtp_weights_path
    from runtime.llm.tokenizer import TextTokenizer

    ap = argparse.ArgumentParser(prog="python -m runtime.llm.mtp", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_LLM)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--sequences", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=600.0, help="budget for the hidden states + training (after the pool is built)")
    ap.add_argument("--positions", type=int, default=48, help="loss positions per step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = checkpoint_dir(args.model)
    tok = TextTokenizer(path)
    fmt = chat_format(spec(args.model).chat_format, tok)
    # The pool is generated in bfloat16 (twice as fast on CPU); targets come from the float32 model.
    seqs = build_pool(load_checkpoint(path, dtype=torch.bfloat16), tok, fmt, args.sequences, args.new_tokens,
                      lambda m: print(m, flush=True))
    base = load_checkpoint(path, dtype=torch.float32)
    model = with_mtp(base, args.depth).float()
    summary = train(model, seqs, args.seconds, args.steps, args.lr, args.positions, lambda m: print(m, flush=True))
    out = args.out or mtp_weights_path(args.model)
    save_mtp(model, out)
    print(f"[llm-mtp] {summary['steps']} steps in {summary['seconds']:.0f}s, accuracy/depth "
          f"{summary['accuracy']}; saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
