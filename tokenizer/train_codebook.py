"""Train the linguistic k-means codebook on Whisper base encoder features (`voxline train-codebook`).

Data: the real clips in tests/data (or `--data` folders) + the packaged Piper voice reading our
sentences with varied rate and noise. Each utterance is encoded on its own (padded to 30 s, as the
tokenizer does at inference), mean-pooled to 16.7 Hz, and clustered with k-means. The whole run is
bounded by `--max-seconds`: data collection stops at 75 % of the budget, k-means gets the rest.
If the data gives fewer than `--min-per-code` vectors per code, the codebook is shrunk and the
report says so (the LLM id layout keeps 1024 linguistic slots either way).
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokenizer.codebook import NearestCentroidCodebook
from tokenizer.speech_data import SENTENCES, PiperSpeaker, Utterance, load_real_clips
from tokenizer.whisper_linguistic import WhisperFeatureEncoder, default_codebook_path


@dataclass
class TrainReport:
    """What went into a codebook (also written into the safetensors metadata)."""

    path: Path | None
    codes: int
    requested_codes: int
    vectors: int
    real_seconds: float
    synthetic_seconds: float
    utterances: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, str]:
        return {"encoder": "whisper-base (CTranslate2 int8), minus silent-window baseline, mean-pool 3",
                "codes": str(self.codes), "requested_codes": str(self.requested_codes),
                "vectors": str(self.vectors), "real_seconds": f"{self.real_seconds:.1f}",
                "synthetic_seconds": f"{self.synthetic_seconds:.1f}", "utterances": str(self.utterances),
                "trained": datetime.datetime.now().isoformat(timespec="seconds"), "notes": " | ".join(self.notes)}


def synthetic_utterances(speaker: PiperSpeaker, sentences: list[str], variants: int, seed: int,
                         deadline: float, log: Callable[[str], None]) -> list[Utterance]:
    """Each sentence read `variants` times with random rate/noise, until the deadline."""
    rng = random.Random(seed)
    out = []
    for i, text in enumerate(sentences):
        for v in range(variants):
            if time.monotonic() > deadline:
                log(f"synthesis stopped by the time budget after {len(out)} utterances")
                return out
            rate, noise, noise_w = rng.uniform(0.8, 1.3), rng.uniform(0.3, 0.9), rng.uniform(0.4, 1.0)
            audio = speaker.say(text, length_scale=rate, noise_scale=noise, noise_w_scale=noise_w)
            out.append(Utterance(f"piper-{i:03d}-{v}", audio, text, synthetic=True))
        if (i + 1) % 8 == 0:
            log(f"synthesised {i + 1}/{len(sentences)} sentences x {variants}")
    return out


def encode_utterances(encoder: WhisperFeatureEncoder, utterances: list[Utterance], deadline: float,
                      log: Callable[[str], None]) -> tuple[list[torch.Tensor], list[Utterance]]:
    """Features [2G, 512] per utterance, in batches, until the deadline."""
    feats, used = [], []
    step = encoder.batch
    for start in range(0, len(utterances), step):
        if time.monotonic() > deadline:
            log(f"encoding stopped by the time budget after {len(used)}/{len(utterances)} utterances")
            break
        batch = utterances[start:start + step]
        feats.extend(encoder.encode([u.audio for u in batch]))
        used.extend(batch)
        if (start // step) % 10 == 0 or start + step >= len(utterances):
            log(f"encoded {len(used)}/{len(utterances)} utterances ({sum(u.seconds for u in used):.0f} s)")
    return feats, used


def train_codebook(out: Path | None = None, codes: int = 1024, max_seconds: float = 600.0,
                   data_dirs: list[Path] | None = None, piper_sentences: list[str] | None = None,
                   variants: int = 3, min_per_code: int = 8, seed: int = 0,
                   encoder: WhisperFeatureEncoder | None = None,
                   log: Callable[[str], None] = print) -> tuple[NearestCentroidCodebook, TrainReport]:
    """Collect speech, encode it, run k-means, and save to `out` (None: don't save)."""
    start = time.monotonic()
    collect_deadline = start + 0.75 * max_seconds
    utterances = load_real_clips(data_dirs)
    log(f"real speech: {len(utterances)} clips, {sum(u.seconds for u in utterances):.1f} s")
    sentences = SENTENCES if piper_sentences is None else piper_sentences
    if sentences and variants > 0:
        log(f"synthesising {len(sentences)} sentences x {variants} variants with Piper (en_US joe)")
        utterances += synthetic_utterances(PiperSpeaker(), sentences, variants, seed,
                                           start + 0.3 * max_seconds, log)
    encoder = encoder or WhisperFeatureEncoder()
    feats, used = encode_utterances(encoder, utterances, collect_deadline, log)
    if not feats:
        raise RuntimeError("no speech could be encoded within the time budget; raise --max-seconds")
    x = torch.cat(feats, 0)  # [N, 512]
    notes = []
    k = codes
    if x.shape[0] < codes * min_per_code:
        k = max(2, x.shape[0] // min_per_code)
        notes.append(f"only {x.shape[0]} vectors: {k} codes instead of {codes} (>= {min_per_code} per code)")
        log("NOTE: " + notes[-1])
    remaining = max(5.0, max_seconds - (time.monotonic() - start))
    log(f"k-means: {x.shape[0]} vectors x {x.shape[1]} dims -> {k} codes (budget {remaining:.0f} s)")
    book = NearestCentroidCodebook.fit(x, k, seed=seed, max_seconds=remaining, log=log)
    usage = torch.bincount(book(x), minlength=k)
    log(f"codes used: {(usage > 0).sum().item()}/{k}")
    report = TrainReport(out, k, codes, x.shape[0], sum(u.seconds for u in used if not u.synthetic),
                         sum(u.seconds for u in used if u.synthetic), len(used),
                         time.monotonic() - start, notes)
    if out is not None:
        book.save(out, report.metadata())
        log(f"saved {k}-code linguistic codebook to {out}")
    log(f"done in {report.seconds:.0f} s")
    return book, report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voxline train-codebook", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help=f"output file (default {default_codebook_path()})")
    p.add_argument("--codes", type=int, default=1024, help="codebook size (default 1024, Step-Audio's)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="time budget for the whole run")
    p.add_argument("--data", type=Path, action="append", help="folder of 16 kHz WAVs (repeatable; "
                   "default: the repository's tests/data)")
    p.add_argument("--variants", type=int, default=3, help="Piper readings per sentence (0: no Piper)")
    p.add_argument("--min-per-code", type=int, default=8, help="shrink the codebook below this data ratio")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.codes < 2 or args.max_seconds <= 0:
        print("--codes must be >= 2 and --max-seconds > 0", file=sys.stderr)
        return 2
    out = args.out or default_codebook_path()
    train_codebook(out, args.codes, args.max_seconds, args.data, variants=args.variants,
                   min_per_code=args.min_per_code, seed=args.seed,
                   log=lambda msg: print(f"[train-codebook] {msg}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
