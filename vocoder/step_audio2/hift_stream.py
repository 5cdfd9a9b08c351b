"""HiFT streaming for token2wav (SPEC2 §10 "HiFT streaming"): mel chunks in, continuous 24 kHz audio out.

Per session (or per batch slot) a :class:`HiFTStream` keeps three caches — the last 8 mel frames, the last 3840
source samples and the last 3840 output samples — and for each mel chunk:

1. runs HiFT on [cached mel, new mel], the first 3840 source samples overwritten by the cached source (phase
   continuity of the NSF excitation);
2. cross-fades the first 3840 output samples with the cached tail using a symmetric Hamming window of 7680
   (new·w[:3840] + old·w[3840:]), in float64 and rounded to float32 as the reference does;
3. refreshes the caches from this output, then emits all but the last 3840 samples unless this is the last chunk.

The first chunk thus emits 20160 samples and each later 50-frame chunk 24000. It is independent of the flow: it
takes mel chunks from anywhere. ``reset()`` starts a new utterance or voice on the same generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vocoder.step_audio2.hift import HiFTGenerator
from vocoder.step_audio2.nsf_source import NoiseDraws

MEL_CACHE_FRAMES = 8


def hamming_window_symmetric(length: int) -> torch.Tensor:
    """numpy.hamming(length): 0.54 − 0.46·cos(2πn/(N−1)), float64 (the reference keeps it in double)."""
    return torch.hamming_window(length, periodic=False, dtype=torch.float64)


def to_pcm16(wave: torch.Tensor) -> torch.Tensor:
    """float waveform -> int16 as the reference writes it: clip to ±1, × 32767, truncate toward zero."""
    return (wave.float().clamp(-1.0, 1.0) * 32767.0).to(torch.int16)


@dataclass
class HiFTChunk:
    """One step's output: ``raw`` (B, n) is HiFT's output on cache + chunk, ``audio`` (B, m) the emitted float
    samples after the cross-fade and hold-back, ``pcm16`` the same as int16."""

    raw: torch.Tensor
    audio: torch.Tensor
    pcm16: torch.Tensor


class HiFTStream:
    """Streaming state around one :class:`HiFTGenerator`; cheap to create, one per session or slot."""

    def __init__(self, hift: HiFTGenerator, mel_cache_frames: int = MEL_CACHE_FRAMES) -> None:
        self.hift = hift
        self.mel_cache_frames = mel_cache_frames
        self.source_cache_samples = mel_cache_frames * hift.config.upsample_scale  # 3840 at 24 kHz
        self.window = hamming_window_symmetric(2 * self.source_cache_samples)
        self.reset()

    def reset(self) -> None:
        """Forget the caches: the next chunk is the start of a new stream."""
        self.mel_cache: torch.Tensor | None = None
        self.source_cache: torch.Tensor | None = None
        self.speech_cache: torch.Tensor | None = None

    def _cross_fade(self, speech: torch.Tensor) -> torch.Tensor:
        assert self.speech_cache is not None
        n = self.speech_cache.shape[-1]
        window = self.window.to(speech.device)
        half = window.shape[0] // 2
        # Only the first half-window of new samples is blended with the last half-window of the old tail.
        n = min(n, half, speech.shape[-1])
        blended = speech[..., :n] * window[:n] + self.speech_cache[..., -n:] * window[half:half + n]
        speech = speech.clone()
        speech[..., :n] = blended.to(speech.dtype)
        return speech

    @torch.no_grad()
    def push(self, mel: torch.Tensor, last: bool = False, draws: NoiseDraws | None = None) -> HiFTChunk:
        """Vocode one mel chunk (B, 80, T); ``last`` flushes the held-back tail. ``draws`` feeds the NSF source."""
        if self.mel_cache is not None:
            mel = torch.cat([self.mel_cache.to(mel.dtype), mel], dim=2)
        raw, source = self.hift(mel, draws, cache_source=self.source_cache)
        speech = self._cross_fade(raw) if self.speech_cache is not None else raw
        self.mel_cache = mel[..., -self.mel_cache_frames:].clone()
        self.source_cache = source[..., -self.source_cache_samples:].clone()
        self.speech_cache = speech[..., -self.source_cache_samples:].clone()
        audio = speech if last else speech[..., :-self.source_cache_samples]
        if last:
            self.reset()
        return HiFTChunk(raw=raw, audio=audio, pcm16=to_pcm16(audio))
