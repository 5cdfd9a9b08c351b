"""``voxline train-mtp --model whisper-base``: self-distil MTP heads for the torch Whisper decoder on CPU.

Data: speech the decoder transcribes itself. Piper TTS (:mod:`tts.piper_tts`) reads
:data:`asr.torch_whisper.sentences.SENTENCES`, joined into clips of a few to ~26 seconds at several
speeds; ``--audio`` adds real recordings (unlabelled: nothing needs a transcript). The evaluation set in
``tests/data`` is held out unless you pass it yourself. For every clip (one 30 s window): the encoder,
plain greedy decoding up to end-of-text, the decoder's hidden state at every position (one
teacher-forced pass) and the last layer's audio keys/values (the heads' cross-attention input).

Targets are the decoder's own greedy tokens, so head ``k`` at position ``i`` learns the token greedy
decoding emits at ``i + k + 2`` — exactly what the verifier accepts — scored over the draft vocabulary.
The decoder is frozen; heads start as copies of its last block (:func:`~.mtp.init_from_decoder`).
"""
from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from asr.torch_whisper.decode import SAMPLE_RATE, TorchWhisperASR, greedy_decode
from asr.torch_whisper.mtp import WhisperMTP, default_draft_ids, init_from_decoder

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """One self-distillation run (defaults: about 5 minutes on a 2-core CPU, data included)."""

    n_depth: int = 3
    steps: int = 1000
    max_seconds: float = 360.0            # wall-clock budget for the whole run, data included
    n_sentences: int = 0                  # 0 = all of SENTENCES
    speeds: tuple[float, ...] = (0.9, 1.0, 1.15)
    clip_seconds: tuple[float, float] = (8.0, 27.0)  # multi-sentence clips; every third clip is one sentence
    batch_size: int = 6
    positions: int = 0                    # scored positions per depth and batch (0 = all)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 10
    feature_noise: float = 0.05           # Gaussian noise on the decoder states fed to head 0, x their RMS
    feature_loss: float = 3.0             # weight of regressing the decoder's state at the target (EAGLE)
    draft_first: int = 8192               # draft vocabulary: these first BPE ids + every id in the pool
    holdout: float = 0.1                  # fraction of clips kept out of training for the accuracy report
    seed: int = 0
    log_every: int = 10
    bf16: bool = True                     # CPU autocast (AVX-512 BF16); the heads' weights stay float32

    def __post_init__(self) -> None:
        lo, hi = self.clip_seconds
        if not 0.5 <= lo <= hi <= 28.0:
            raise ValueError("clip_seconds must satisfy 0.5 <= lo <= hi <= 28 (one Whisper window)")
        if self.n_depth < 1 or self.steps < 1 or self.batch_size < 1 or self.max_seconds <= 0:
            raise ValueError("n_depth, steps, batch_size and max_seconds must be positive")


@dataclass
class Sample:
    """One decoded window: ids [L] (prompt .. end-of-text), decoder states [L-1, D], last-layer cross K/V."""

    tokens: torch.Tensor
    hidden: torch.Tensor
    k_t: torch.Tensor        # [H, Dh, A] bfloat16
    v: torch.Tensor          # [H, A, Dh] bfloat16


def _augment(audio: np.ndarray, rng: random.Random) -> np.ndarray:
    """One voice is not many speakers: shift pitch and tempo together (read the samples at another rate),
    vary the level and add a little noise (20-45 dB SNR)."""
    import soxr

    factor = rng.uniform(0.92, 1.08)
    audio = soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)
    audio *= rng.uniform(0.5, 1.0) / max(float(np.abs(audio).max()), 1e-6)
    rms = float(np.sqrt(np.mean(audio ** 2))) or 1e-3
    noise = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(len(audio)).astype(np.float32)
    return audio + noise * rms * 10 ** (-rng.uniform(20, 45) / 20)


def synthesise_clips(cfg: TrainConfig, log: Log) -> list[np.ndarray]:
    """Piper reads the sentences (speeds cycled, each augmented); every third clip is one sentence (like a
    short command), the others join sentences with short pauses up to a random length (more words per
    30 s encoder pass)."""
    import soxr

    from asr.torch_whisper.sentences import SENTENCES
    from tts.piper_tts import PiperTTS, SpeechOptions

    rng = random.Random(cfg.seed)
    sentences = list(SENTENCES)
    rng.shuffle(sentences)
    sentences = sentences[:cfg.n_sentences or None]
    tts, t0 = PiperTTS(), time.perf_counter()
    clips, parts, seconds = [], [], 0.0

    def target() -> float:
        return 0.0 if len(clips) % 3 == 0 else rng.uniform(*cfg.clip_seconds)

    limit = target()
    for i, text in enumerate(sentences):
        pcm = tts.synthesize_all(text, SpeechOptions(speed=cfg.speeds[i % len(cfg.speeds)]))
        audio = soxr.resample(pcm.astype(np.float32) / 32768.0, tts.sample_rate, SAMPLE_RATE).astype(np.float32)
        audio = _augment(audio, rng)[: 27 * SAMPLE_RATE]
        if parts and seconds + len(audio) / SAMPLE_RATE > min(limit, 28.0):
            clips.append(np.concatenate(parts))
            parts, seconds, limit = [], 0.0, target()
        pause = np.zeros(int(rng.uniform(0.15, 0.6) * SAMPLE_RATE), np.float32)
        parts += [pause, audio]
        seconds += (len(pause) + len(audio)) / SAMPLE_RATE
    if parts:
        clips.append(np.concatenate(parts))
    total = sum(map(len, clips)) / SAMPLE_RATE
    log(f"[train-mtp] synthesised {len(sentences)} sentences -> {len(clips)} clips, {total:.0f}s of speech "
        f"({time.perf_counter() - t0:.0f}s)")
    return clips


def read_recordings(paths: Sequence[str]) -> list[np.ndarray]:
    """Mono 16 kHz float32 audio of each file (any rate soundfile reads)."""
    import soundfile
    import soxr

    out = []
    for p in paths:
        audio, rate = soundfile.read(p, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        out.append(audio if rate == SAMPLE_RATE else soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32))
    return out


@torch.no_grad()
def build_pool(asr: TorchWhisperASR, audios: list[np.ndarray], log: Log, deadline: float = math.inf) -> list[Sample]:
    """Encode and greedily decode every 30 s window of every clip; keep what the heads train on."""
    model, vocab, pool = asr.model, asr.vocab, []
    prompt, t0 = list(vocab.prompt), time.perf_counter()
    windows = [w for audio in audios for w in asr.windows(audio)]
    for i, window in enumerate(windows):
        if time.perf_counter() > deadline:
            log(f"[train-mtp] data budget reached after {i} of {len(windows)} windows")
            break
        cross_k, cross_v = asr.encode(window)
        result = greedy_decode(model, cross_k, cross_v, vocab, asr.filter)
        ids = prompt + result.tokens + ([vocab.eot] if result.generated > len(result.tokens) else [])
        tokens = torch.tensor(ids)
        hidden = model.decoder(tokens[None, :-1], cross_k, cross_v)[0]           # [L-1, D], offline
        pool.append(Sample(tokens, hidden.float(), cross_k[-1, 0].bfloat16(), cross_v[-1, 0].bfloat16()))
        if (i + 1) % 5 == 0 or i + 1 == len(windows):
            n_tok = sum(len(s.tokens) - len(prompt) for s in pool)
            log(f"[train-mtp] pool: {i + 1}/{len(windows)} windows, {n_tok} greedy tokens "
                f"({time.perf_counter() - t0:.0f}s)")
    return pool


def _batch(samples: list[Sample], pad: int, dtype: torch.dtype):
    """Right-pad to the longest sample: tokens [B, L], hidden [B, L-1, D], lengths [B], k_t, v [B, ...]."""
    length = max(len(s.tokens) for s in samples)
    d = samples[0].hidden.shape[-1]
    tokens = torch.full((len(samples), length), pad, dtype=torch.long)
    hidden = torch.zeros(len(samples), length - 1, d)
    for b, s in enumerate(samples):
        tokens[b, :len(s.tokens)] = s.tokens
        hidden[b, :len(s.hidden)] = s.hidden
    lengths = torch.tensor([len(s.tokens) for s in samples])
    k_t = torch.stack([s.k_t for s in samples]).to(dtype)
    v = torch.stack([s.v for s in samples]).to(dtype)
    return tokens, hidden, lengths, k_t, v


def mtp_loss(mtp: WhisperMTP, samples: list[Sample], prompt_len: int, to_draft: torch.Tensor,
             positions: int = 0, noise: float = 0.0, generator: torch.Generator | None = None,
             feature: float = 0.0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[float], list[int]]:
    """Loss of every depth and its accuracy / count of scored positions.

    Head k at position i predicts tokens[i+k+2]; it is scored where that token was generated (not the
    prompt) and exists. ``to_draft`` maps a vocabulary id to its draft index (-1: not draftable, skipped).
    Per depth: cross-entropy against the decoder's greedy token, plus ``feature`` x smooth-L1 between the
    head's normed state and the decoder's own state at the target position (EAGLE-style feature
    regression: 512 numbers of supervision per token instead of one label — with a few thousand training
    tokens it lifted the first head's held-out accuracy from ~0.44 to ~0.56 in our runs).
    """
    tokens, hidden, lengths, k_t, v = _batch(samples, pad=0, dtype=dtype)
    teacher_h = F.pad(hidden, (0, 0, 0, 1))                                 # [B, L, D]: row j predicts token j+1
    if noise:
        rms = hidden.pow(2).mean(-1, keepdim=True).sqrt()
        hidden = hidden + noise * rms * torch.randn(hidden.shape, generator=generator)
    loss, acc, count = hidden.new_zeros(()), [], []
    for k, g in enumerate(mtp.offline(hidden, tokens, k_t, v)):
        i = torch.arange(g.shape[1])
        tgt_pos = i[None] + k + 2                                             # [1, T]
        valid = (tgt_pos >= prompt_len) & (tgt_pos < lengths[:, None])       # [B, T]
        tgt = to_draft[tokens.gather(1, tgt_pos.clamp(max=tokens.shape[1] - 1).expand(len(samples), -1))]
        valid &= tgt >= 0
        rows, tgt = g[valid], tgt[valid]                                      # [N, D], [N]
        if not len(tgt):                                                      # nothing this deep in the batch
            acc.append(math.nan)
            count.append(0)
            continue
        teach = teacher_h[:, k + 1:k + 1 + g.shape[1]][valid]                 # decoder state predicting tgt
        if 0 < positions < len(tgt):
            pick = torch.randperm(len(tgt), generator=generator)[:positions]
            rows, tgt, teach = rows[pick], tgt[pick], teach[pick]
        logits = mtp.head_logits(k, rows).float()
        term = F.cross_entropy(logits, tgt)
        if feature:
            term = term + feature * F.smooth_l1_loss(mtp.heads[k].norm(rows).float(), teach.float())
        loss = loss + term
        acc.append(float((logits.argmax(-1) == tgt).float().mean()) if len(tgt) else math.nan)
        count.append(len(tgt))
    return loss, acc, count


def train_mtp(asr: TorchWhisperASR, mtp: WhisperMTP, pool: list[Sample], cfg: TrainConfig, log: Log = print,
              deadline: float = math.inf) -> dict:
    """Train ``mtp`` in place on ``pool`` (decoder frozen); returns a summary with held-out accuracy."""
    rng = random.Random(cfg.seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    n_hold = int(round(cfg.holdout * len(pool))) if len(pool) > 4 else 0
    held, train = [pool[i] for i in order[:n_hold]], [pool[i] for i in order[n_hold:]]
    to_draft = torch.full((asr.model.dims.n_vocab,), -1, dtype=torch.long)
    to_draft[mtp.draft_ids] = torch.arange(len(mtp.draft_ids))
    prompt_len = len(asr.vocab.prompt)
    params = list(mtp.heads.parameters())
    mtp.train().requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, loss_v, acc, t0 = 0, math.nan, [], time.perf_counter()

    def lr_factor(s: int) -> float:
        """Linear warm-up, then cosine decay over whichever runs out first: steps or time."""
        elapsed = (time.perf_counter() - t0) / max(deadline - t0, 1e-9) if deadline < math.inf else 0.0
        done = max(s / cfg.steps, elapsed)
        return min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    try:
        while step < cfg.steps and time.perf_counter() < deadline:
            batch = [train[i] for i in torch.randint(0, len(train), (cfg.batch_size,), generator=gen).tolist()]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, acc, _ = mtp_loss(mtp, batch, prompt_len, to_draft, cfg.positions, cfg.feature_noise, gen,
                                        feature=cfg.feature_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_v = float(loss.detach())
            if step % cfg.log_every == 0 or step == 1:
                log(f"[train-mtp] step {step} loss {loss_v:.3f} acc/depth " + " ".join(f"{a:.2f}" for a in acc)
                    + f" ({time.perf_counter() - t0:.0f}s training)")
    finally:
        mtp.eval().requires_grad_(False)
    held_acc = []
    if held:
        with torch.no_grad():
            _, held_acc, _ = mtp_loss(mtp, held, prompt_len, to_draft)
        log("[train-mtp] held-out clips: acc/depth " + " ".join(f"{a:.2f}" for a in held_acc))
    return {"steps": step, "loss": loss_v, "train_accuracy": acc, "heldout_accuracy": held_acc,
            "train_seconds": time.perf_counter() - t0, "train_clips": len(train), "heldout_clips": len(held)}


def asr_eot(name: str) -> int:
    """End-of-text id (a placeholder draft vocabulary until the pool says which ids occur)."""
    from asr.torch_whisper.decode import Vocab

    return Vocab.load(name, multilingual=name != "whisper-tiny.en")[0].eot


def mtp_path(name: str = "whisper-base") -> Path:
    """Default location of trained heads: beside the converted model, keyed by the model's SHA-256."""
    from asr.torch_whisper.convert import model_sha256
    from voxcore.embedded_whisper import whisper_model_dir
    from voxcore.model_cache import cache_root

    sha = model_sha256(name, whisper_model_dir(name))
    return cache_root() / "torch-whisper" / f"mtp-{name}-{sha[:16]}.safetensors"


def run(name: str, cfg: TrainConfig, audio_paths: Sequence[str] = (), out: str | Path | None = None,
        log: Log = print) -> tuple[WhisperMTP, dict]:
    """Whole pipeline: model, data, heads, training, save. Returns the (eval-mode) heads and a summary."""
    from asr.torch_whisper.model import Whisper

    t_start = time.perf_counter()
    deadline = t_start + cfg.max_seconds
    torch.manual_seed(cfg.seed)
    model = Whisper.load(name)
    mtp = init_from_decoder(WhisperMTP(model, cfg.n_depth, torch.tensor([asr_eot(name)])), model)
    asr = TorchWhisperASR(name, model=model)                                # packs the decoder: init first
    audios = synthesise_clips(cfg, log) + read_recordings(audio_paths)
    # At least 40% of the budget is left for training: data stops early if synthesis/encoding is slow.
    pool = build_pool(asr, audios, log, deadline=t_start + 0.6 * cfg.max_seconds)
    if not pool:
        raise RuntimeError("no training data was decoded within the time budget")
    seen = sorted({int(t) for s in pool for t in s.tokens[len(asr.vocab.prompt):]})
    mtp.set_draft_ids(default_draft_ids(asr.vocab, cfg.draft_first, seen))
    n_tok = sum(len(s.tokens) - len(asr.vocab.prompt) for s in pool)
    log(f"[train-mtp] {len(pool)} windows, {n_tok} target tokens; draft vocabulary {len(mtp.draft_ids)} ids; "
        f"{sum(p.numel() for p in mtp.heads.parameters()) / 1e6:.1f} M head parameters; "
        f"data took {time.perf_counter() - t_start:.0f}s")
    summary = train_mtp(asr, mtp, pool, cfg, log, deadline)
    summary["total_seconds"] = time.perf_counter() - t_start
    summary["pool_windows"], summary["pool_tokens"] = len(pool), n_tok
    path = Path(out) if out else mtp_path(name)
    held = " ".join(f"{a:.2f}" for a in summary["heldout_accuracy"]) or "n/a"
    summary["text"] = (f"{summary['steps']} steps in {summary['total_seconds']:.0f} s on CPU, data included: "
                       f"{len(pool)} windows, {n_tok} greedy tokens ({summary['train_clips']} windows "
                       f"trained on, {summary['heldout_clips']} held out: accuracy per head {held})")
    mtp.save(path, {"model": name, "steps": str(summary["steps"]), "summary": summary["text"]})
    summary["path"] = str(path)
    log(f"[train-mtp] {summary['steps']} steps, {summary['total_seconds']:.0f}s in all; saved heads to {path}")
    return mtp, summary


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (``voxline train-mtp --model whisper-base ...``)."""
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog="voxline train-mtp --model whisper-base", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-base", help="embedded Whisper model (whisper-base, whisper-tiny.en)")
    ap.add_argument("--out", default=None, help="heads file (default: the voxline cache, keyed by the model SHA)")
    ap.add_argument("--depth", type=int, default=d.n_depth, help="MTP heads (max drafts per step)")
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--seconds", type=float, default=d.max_seconds, help="wall-clock budget, data included")
    ap.add_argument("--sentences", type=int, default=d.n_sentences, help="synthesised sentences (0 = all)")
    ap.add_argument("--audio", nargs="*", default=[], help="extra real recordings (unlabelled)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--fp32", action="store_true", help="train in float32 (default: bfloat16 autocast)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(n_depth=args.depth, steps=args.steps, max_seconds=args.seconds, n_sentences=args.sentences,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, bf16=not args.fp32)
    log = lambda s: print(s, flush=True)  # noqa: E731
    run(args.model, cfg, args.audio, args.out, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
