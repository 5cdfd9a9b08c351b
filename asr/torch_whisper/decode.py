"""Greedy decoding with the torch Whisper, matching faster-whisper's greedy path token for token.

What faster-whisper 1.2 asks CTranslate2 for when it transcribes with ``beam_size=1``, one temperature
(0), ``without_timestamps=True`` and no previous-text conditioning — and what this module reproduces:

* prompt ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``;
* every step suppresses faster-whisper's ``suppress_tokens=[-1]`` set (non-speech symbols plus the
  task/special tokens); the first generated step also suppresses ``suppress_ids_begin`` from the
  model's ``config.json`` (blank and end-of-text) — ``suppress_blank=True``;
* at most ``min(448 // 2, 448 - 3) = 224`` generated tokens (CTranslate2's ``max_length`` rule);
* ``no_speech_prob`` = softmax of the logits at ``<|startoftranscript|>``; a window is dropped when it
  exceeds 0.6 and the average log-probability of the output (end-of-text included, over ``n + 1``) is
  at most -1;
* audio in 30 s windows of the log-mel features (faster-whisper's own feature extractor and padding),
  each window's text stripped, windows joined by spaces.

Decoding is split into small parts (whisper ``decoding.py`` style): :class:`LogitFilter` (suppression),
:func:`greedy_decode` (the plain loop — the reference for multi-token decoding in :mod:`.mtp`) and
:class:`TorchWhisperASR` (features, windows, text), which takes either decoder.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from asr.torch_whisper.model import Whisper

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class GreedyOptions:
    """Per-request options of one window's greedy decode (faster-whisper's defaults for our path)."""

    max_new_tokens: int = 224
    suppress_blank: bool = True
    no_speech_threshold: float | None = 0.6
    log_prob_threshold: float | None = -1.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 224:
            raise ValueError("max_new_tokens must be between 1 and 224 (448 positions, half for the output)")


@dataclass
class DecodeResult:
    """One window's output and what it cost."""

    tokens: list[int]                 # generated ids, end-of-text excluded
    no_speech_prob: float
    passes: int                       # decoder forward passes, the prompt's included
    generated: int                    # tokens produced, end-of-text included
    steps: list[int] = field(default_factory=list)  # tokens committed per verify step (MTP only)
    seconds: float = 0.0              # decode wall time (encoder excluded)

    @property
    def passes_per_token(self) -> float:
        return self.passes / max(self.generated, 1)


class LogitFilter:
    """Suppress ``ids`` at every step and ``begin_ids`` too at the first generated step (in place)."""

    def __init__(self, vocab: int, ids: list[int], begin_ids: list[int]) -> None:
        self.mask = torch.zeros(vocab, dtype=torch.bool)
        self.mask[ids] = True
        self.begin_mask = self.mask.clone()
        self.begin_mask[begin_ids] = True

    def __call__(self, logits: torch.Tensor, first: torch.Tensor | bool = False) -> torch.Tensor:
        """logits [T, V]; ``first`` [T] bool (or one bool for all rows) marks first-step rows."""
        if isinstance(first, bool):
            return logits.masked_fill_(self.begin_mask if first else self.mask, float("-inf"))
        mask = torch.where(first[:, None], self.begin_mask, self.mask)
        return logits.masked_fill_(mask, float("-inf"))


@dataclass(frozen=True)
class Vocab:
    """The ids decoding needs, from the model's ``tokenizer.json`` and ``config.json``."""

    prompt: tuple[int, ...]
    sot_index: int
    eot: int
    no_speech: int
    suppress: tuple[int, ...]
    suppress_begin: tuple[int, ...]

    @classmethod
    def load(cls, name: str = "whisper-base", language: str = "en", multilingual: bool = True
             ) -> tuple["Vocab", object]:
        """(ids, faster-whisper ``Tokenizer``) for transcription without timestamps. ``multilingual``:
        the model's vocabulary has 51865 ids or more (Whisper's own rule; ``.en`` models have 51864)."""
        import tokenizers
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        from voxcore.embedded_whisper import whisper_model_dir

        directory = whisper_model_dir(name)
        hf = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        tok = Tokenizer(hf, multilingual, task="transcribe", language=language if multilingual else None)
        config = json.loads((directory / "config.json").read_text())
        prompt = (*tok.sot_sequence, tok.no_timestamps)
        vocab = cls(prompt=prompt, sot_index=prompt.index(tok.sot), eot=tok.eot, no_speech=tok.no_speech,
                    suppress=tuple(get_suppressed_tokens(tok, [-1])),
                    suppress_begin=tuple(config.get("suppress_ids_begin", [])))
        return vocab, tok


def sequence_logprob(model: Whisper, cross_k: torch.Tensor, cross_v: torch.Tensor, prompt: list[int],
                     tokens: list[int]) -> float:
    """Sum of log-softmax(raw logits) of ``tokens`` after ``prompt`` (one teacher-forced pass)."""
    seq = torch.tensor([prompt + tokens])
    hidden = model.decoder(seq[:, :-1], cross_k, cross_v)[0, len(prompt) - 1:]
    logp = model.decoder.logits(hidden).float().log_softmax(-1)
    return float(logp.gather(1, seq[0, len(prompt):, None]).sum())


def keep_window(model: Whisper, vocab: Vocab, opts: GreedyOptions, cross_k: torch.Tensor, cross_v: torch.Tensor,
                result: DecodeResult) -> bool:
    """faster-whisper's no-speech rule; the log-probability pass only runs when the rule could drop."""
    if opts.no_speech_threshold is None or result.no_speech_prob <= opts.no_speech_threshold:
        return True
    if opts.log_prob_threshold is None:
        return False
    full = result.tokens + ([vocab.eot] if result.generated > len(result.tokens) else [])
    avg = sequence_logprob(model, cross_k, cross_v, list(vocab.prompt), full) / (len(result.tokens) + 1)
    return avg > opts.log_prob_threshold


def prompt_outputs(dec, hidden: torch.Tensor, vocab: Vocab, filt: LogitFilter, opts: GreedyOptions
                   ) -> tuple[float, int]:
    """From the prompt pass's states [P, D]: no-speech probability (raw logits at <|startoftranscript|>) and
    the first token (filtered, blank suppressed). Both rows in one output-head product."""
    logits = dec.logits(hidden[[vocab.sot_index, -1]])                          # [2, V]
    no_speech = float(logits[0].float().softmax(-1)[vocab.no_speech])
    return no_speech, int(filt(logits[1:], first=opts.suppress_blank)[0].argmax())


@torch.no_grad()
def greedy_decode(model: Whisper, cross_k: torch.Tensor, cross_v: torch.Tensor, vocab: Vocab,
                  filt: LogitFilter, opts: GreedyOptions = GreedyOptions()) -> DecodeResult:
    """Plain greedy decoding of one window: one decoder pass per token.

    cross_k [L, 1, H, Dh, A], cross_v [L, 1, H, A, Dh] from :meth:`TorchWhisperASR.encode`. The reference that
    multi-token decoding must reproduce token for token.
    """
    t0 = time.perf_counter()
    dec = model.decoder
    cache = model.new_cache(cross_k, cross_v)
    prompt = torch.tensor([vocab.prompt])
    hidden = dec(prompt, cross_k, cross_v, cache, 0)[0]                       # [P, D]
    no_speech, token = prompt_outputs(dec, hidden, vocab, filt, opts)
    out, pos, passes = [token], len(vocab.prompt), 1
    while token != vocab.eot and len(out) < opts.max_new_tokens:
        hidden = dec(torch.tensor([[token]]), cross_k, cross_v, cache, pos)[0]  # [1, D]
        passes += 1
        pos += 1
        token = int(filt(dec.logits(hidden))[0].argmax())
        out.append(token)
    text = out[:-1] if out[-1] == vocab.eot else out
    return DecodeResult(text, no_speech, passes, len(out), [1] * (passes - 1), time.perf_counter() - t0)


WindowDecoder = Callable[[Whisper, torch.Tensor, torch.Tensor, Vocab, LogitFilter, GreedyOptions], DecodeResult]


@dataclass
class Transcription:
    text: str
    windows: list[DecodeResult]
    encode_seconds: float
    decode_seconds: float

    @property
    def passes(self) -> int:
        return sum(w.passes for w in self.windows)

    @property
    def generated(self) -> int:
        return sum(w.generated for w in self.windows)


class TorchWhisperASR:
    """Torch Whisper transcription (no timestamps, greedy), windowed exactly like faster-whisper.

    ``decoder`` picks the window decoder: :func:`greedy_decode` (plain) or an MTP decoder from
    :mod:`.mtp` (token-identical, fewer decoder passes).
    """

    def __init__(self, name: str = "whisper-base", model: Whisper | None = None, language: str = "en",
                 pack: bool = True) -> None:
        from faster_whisper.feature_extractor import FeatureExtractor

        from asr.torch_whisper.packed import pack_decoder

        self.name = name
        self.model = model or Whisper.load(name)
        if pack:
            pack_decoder(self.model)
        self.vocab, self.tokenizer = Vocab.load(name, language, self.model.dims.n_vocab >= 51865)
        self.filter = LogitFilter(self.model.dims.n_vocab, list(self.vocab.suppress), list(self.vocab.suppress_begin))
        self.features = FeatureExtractor(feature_size=self.model.dims.n_mels)

    def windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """Log-mel windows [n_mels, 3000], as faster-whisper's ``generate_segments`` cuts them."""
        from faster_whisper.audio import pad_or_trim

        feats = self.features(np.asarray(audio, np.float32))
        content = feats.shape[-1] - 1
        out, seek = [], 0
        while seek < content:
            size = min(self.features.nb_max_frames, content - seek)
            out.append(pad_or_trim(feats[:, seek:seek + size]))
            seek += size
        return out

    @torch.no_grad()
    def encode(self, window: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One window -> decoder cross keys/values [L, 1, H, A, Dh]."""
        audio = self.model.encoder(torch.from_numpy(np.ascontiguousarray(window))[None])
        return self.model.decoder.cross_kv(audio)

    def transcribe(self, audio: np.ndarray, decoder: WindowDecoder = greedy_decode,
                   opts: GreedyOptions = GreedyOptions(), encoded: list | None = None) -> Transcription:
        """audio: float32 mono 16 kHz. ``encoded``: cross K/V per window, reused across decoders (benchmarks)."""
        enc_s = dec_s = 0.0
        texts, results = [], []
        for i, window in enumerate(self.windows(audio)):
            t0 = time.perf_counter()
            cross = encoded[i] if encoded is not None else self.encode(window)
            t1 = time.perf_counter()
            result = decoder(self.model, *cross, self.vocab, self.filter, opts)
            keep = keep_window(self.model, self.vocab, opts, *cross, result)
            t2 = time.perf_counter()
            enc_s, dec_s = enc_s + t1 - t0, dec_s + t2 - t1
            results.append(result)
            text = self.tokenizer.decode(result.tokens).strip() if keep else ""
            if text:
                texts.append(text)
        return Transcription(" ".join(texts), results, enc_s, dec_s)
