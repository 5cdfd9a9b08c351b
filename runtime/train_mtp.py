"""``voxline train-mtp``: train the MTP modules by self-distillation, backbone frozen.

Data: random prompts continued by the backbone's own greedy decoding (plain decoding through the
same engine the service uses). Targets: the backbone's argmax at every position, so MTP depth k at
position i learns the token the backbone would pick at position i+k+1 — exactly what the greedy
verifier accepts. Bounded by a step count and a wall-clock budget; runs on CPU.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from runtime.engine import DecodeEngine
from runtime.model import AudioLM


@dataclass(frozen=True)
class TrainMTPConfig:
    """Options of one self-distillation run (defaults fit a few CPU minutes on the bench preset)."""

    steps: int = 5000
    max_seconds: float = 180.0
    n_sequences: int = 256          # size of the self-distillation pool
    seq_len: int = 128              # prompt + greedy continuation
    prompt_len: tuple[int, int] = (4, 24)
    batch_size: int = 8
    sample: int = 32                # scored positions per sequence and depth (0 = all)
    warm_start: bool = True         # start from pass_through_init (False: train the weights as given)
    feature_noise: float = 0.2      # Gaussian noise on the backbone hidden input, x its RMS (EAGLE)
    weight_decay: float = 0.05
    lr: float = 3e-3
    warmup: int = 20
    seed: int = 0
    log_every: int = 25
    bf16: bool = True               # CPU autocast: ~2.5x faster matmuls on AVX-512 BF16 machines

    def __post_init__(self) -> None:
        lo, hi = self.prompt_len
        if not 1 <= lo <= hi < self.seq_len:
            raise ValueError(f"prompt_len {self.prompt_len} must satisfy 1 <= lo <= hi < seq_len={self.seq_len}")
        if self.steps < 1 or self.max_seconds <= 0 or self.batch_size < 1:
            raise ValueError("steps, max_seconds and batch_size must be positive")


def random_prompts(vocab: int, n: int, lengths: tuple[int, int], seed: int) -> list[list[int]]:
    """``n`` prompts of uniform random ids with lengths in ``[lo, hi]`` (synthetic, reproducible)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = lengths
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens]


@torch.no_grad()
def build_pool(model: AudioLM, cfg: TrainMTPConfig, log: Callable[[str], None] = print,
               gen_batch: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-distillation data: tokens [N, T], backbone hidden [N, T, D], targets [N, T].

    Plain greedy decoding through :class:`DecodeEngine`; the hidden states are the ones the decode
    steps computed (no second backbone pass). target[:, p] = token p+1, which past the prompt is the
    backbone's own greedy choice at p (inside the prompt it is just the prompt; the loss skips it).
    """
    prompts = random_prompts(model.config.vocab_size, cfg.n_sequences, cfg.prompt_len, cfg.seed)
    t_len = cfg.seq_len
    toks, hids = [], []
    t0 = time.perf_counter()
    engine = DecodeEngine(model, batch=gen_batch, capacity=t_len + cfg.prompt_len[1] + 8, n_draft=0)
    for i in range(0, len(prompts), gen_batch):
        chunk = prompts[i:i + gen_batch]
        seqs, hs = [], []
        for b, p in enumerate(chunk):
            engine.reset(b)
            seqs.append(p + [engine.extend(b, p)])
            hs.append([engine.last_hidden[0]])                                  # [L, D]
        active = torch.zeros(engine.batch, dtype=torch.bool)
        active[:len(chunk)] = True
        for _ in range(t_len - min(map(len, chunk)) + 1):
            new, _ = engine.step(active)                                        # one token per slot
            for b in range(len(chunk)):
                hs[b].append(engine.last_hidden[b, :1])                         # [1, D]
            for b, t in enumerate(new[:, 0].tolist()[:len(chunk)]):
                seqs[b].append(t)
        toks += [torch.tensor(s[:t_len + 1]) for s in seqs]
        hids += [torch.cat(h)[:t_len] for h in hs]
        log(f"[train-mtp] pool: {len(toks)}/{len(prompts)} greedy continuations "
            f"({time.perf_counter() - t0:.1f}s)")
    tokens = torch.stack(toks)                                                  # [N, T+1]
    return tokens[:, :t_len], torch.stack(hids), tokens[:, 1:]


def mtp_loss(model: AudioLM, tokens: torch.Tensor, hidden: torch.Tensor, target: torch.Tensor,
             start: int = 0, sample: int = 0, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, list[float]]:
    """Summed cross-entropy of every depth against the backbone's argmax, and per-depth accuracy.

    tokens, target [B, T]; hidden [B, T, D]. Depth k (0-based) at position i predicts the backbone's
    choice at position i+k+1, i.e. target[:, i+k+1]. Only predictions of positions >= ``start`` count
    (the random prompt is not the backbone's behaviour). ``sample > 0`` scores that many random
    positions per depth and sequence: the output head is a large part of the cost, neighbouring
    positions carry nearly the same signal, and every position still feeds attention.
    """
    loss = hidden.new_zeros((), dtype=torch.float32)
    acc = []
    for k, g in enumerate(model.mtp_offline(hidden, tokens, model.config.n_mtp)):
        first = max(start - k - 1, 0)                                   # first scored position
        g = g[:, first:]                                                # [B, L, D]
        tgt = target[:, first + k + 1:first + k + 1 + g.shape[1]]      # [B, L]
        if 0 < sample < g.shape[1]:
            idx = torch.rand(g.shape[:2], generator=generator).argsort(dim=1)[:, :sample]   # [B, S]
            g = g.gather(1, idx[..., None].expand(-1, -1, g.shape[-1]))
            tgt = tgt.gather(1, idx)
        logits = model.mtp_logits(k, g)                                 # [B, L, V]
        loss = loss + F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())
        acc.append((logits.argmax(-1) == tgt).float().mean().item())
    return loss, acc


@torch.no_grad()
def pass_through_init(model: AudioLM) -> None:
    """Warm start: every MTP module initially returns the normed embedding of its input token.

    ``eh_proj = [0 | I]`` passes ``enorm(Emb(t_{i+k}))`` and zeroed ``o_proj`` / ``down_proj`` make
    the block an identity, so depth k starts by predicting "t_{i+k+1} = t_{i+k}" for *every* token
    (with tied embeddings the output head maps an embedding back to its own id). Training then
    learns where the backbone deviates from that. Why: started from random weights, a few CPU
    minutes of self-distillation fitted the few hundred ids of the training pool (accuracy ~0.7
    there, ~0.1 on new prompts) instead of a rule that transfers.
    """
    d = model.config.d_model
    for m in model.mtp:
        m.eh_proj.weight.zero_()
        m.eh_proj.weight[:, d:].copy_(torch.eye(d))
        m.block.self_attn.o_proj.weight.zero_()
        m.block.mlp.down_proj.weight.zero_()
        for norm in (m.hnorm, m.enorm, m.norm):
            norm.weight.fill_(1.0)


def train_mtp(model: AudioLM, cfg: TrainMTPConfig | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Train ``model.mtp`` in place (backbone frozen); returns a summary dict."""
    cfg = cfg or TrainMTPConfig()
    if model.config.n_mtp == 0:
        raise ValueError("the model has no MTP modules (config.n_mtp == 0)")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokens, hidden, target = build_pool(model, cfg, log)
    if cfg.warm_start:
        pass_through_init(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("mtp."))
    params = [p for p in model.mtp.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    model.train()
    t_train = time.perf_counter()
    step, loss_v, acc = 0, math.nan, []
    try:
        while step < cfg.steps and time.perf_counter() - t_start < cfg.max_seconds:
            idx = torch.randint(0, tokens.shape[0], (cfg.batch_size,), generator=g)
            h = hidden[idx]
            if cfg.feature_noise:
                # Noise on the features keeps the heads from memorising each sequence's exact hidden
                # states (the pool is small) and makes them robust to drift, as in EAGLE.
                rms = h.pow(2).mean(-1, keepdim=True).sqrt()
                h = h + cfg.feature_noise * rms * torch.randn(h.shape, generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, acc = mtp_loss(model, tokens[idx], h, target[idx],
                                     start=cfg.prompt_len[1], sample=cfg.sample, generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_v = loss.item()
            if step % cfg.log_every == 0 or step == 1:
                log(f"[train-mtp] step {step} loss {loss_v:.3f} acc/depth "
                    + " ".join(f"{a:.2f}" for a in acc) + f" ({time.perf_counter() - t_start:.0f}s)")
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return {"steps": step, "loss": loss_v, "accuracy": acc,
            "train_seconds": time.perf_counter() - t_train, "total_seconds": time.perf_counter() - t_start}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``voxline train-mtp --model bench --out mtp.safetensors [--seconds 180] ...``."""
    from runtime.checkpoint import load_mtp, save_mtp
    from runtime.presets import load_model

    ap = argparse.ArgumentParser(prog="voxline train-mtp", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bench", help="preset name (tiny, bench) or checkpoint directory")
    ap.add_argument("--out", required=True, help="where to write the MTP weights (.safetensors)")
    ap.add_argument("--init", default=None, help="start from these MTP weights (.safetensors)")
    d = TrainMTPConfig()
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--seconds", type=float, default=d.max_seconds, help="wall-clock budget, data included")
    ap.add_argument("--sequences", type=int, default=d.n_sequences)
    ap.add_argument("--seq-len", type=int, default=d.seq_len)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--fp32", action="store_true", help="train in float32 (default: bfloat16 autocast)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads; 1 is fastest on a CPU shared with other jobs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if args.init:
        load_mtp(model, args.init)
    cfg = TrainMTPConfig(steps=args.steps, max_seconds=args.seconds, n_sequences=args.sequences,
                         seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         bf16=not args.fp32, warm_start=not args.init)
    summary = train_mtp(model, cfg)
    save_mtp(model, args.out)
    print(f"[train-mtp] {summary['steps']} steps in {summary['total_seconds']:.0f}s, loss {summary['loss']:.3f}; "
          f"saved MTP weights to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
