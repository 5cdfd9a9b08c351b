"""Causal, streamable log-mel features computed with torch alone (no torchaudio on the CPU build).

Frame t covers samples [t*hop + hop - n_fft, t*hop + hop): it ends where the t-th hop ends, so the frame
never looks ahead and a streamed run only has to remember the last n_fft - hop samples. The usual
"centred" STFT would need half a window of lookahead; Whisper's per-utterance max normalisation would
need the whole utterance, so we use a fixed affine scaling instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from voxcore.streaming import LeafState, LeafStates, StreamingLeaf


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> torch.Tensor:
    """Triangular HTK-scale filters with Slaney area normalisation: [n_fft // 2 + 1, n_mels]."""
    fmax = fmax or sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(_hz_to_mel(torch.tensor(fmin)), _hz_to_mel(torch.tensor(fmax)), n_mels + 2,
                          dtype=torch.float64)
    edges = _mel_to_hz(mels)  # [n_mels + 2]
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lower) / (centre - lower)
    down = (upper - freqs[:, None]) / (upper - centre)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))  # equal area per filter, so bands are comparable in loudness
    return fb.to(torch.float32)


@dataclass
class MelState(LeafState):
    history: torch.Tensor  # [B, n_fft - hop] the last samples of the previous chunk


class LogMel(StreamingLeaf):
    """Streaming log-mel: audio [B, n] (n a multiple of hop) -> [B, n_mels, n / hop]."""

    def __init__(self, n_mels: int, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160):
        super().__init__()
        self.n_mels, self.n_fft, self.hop = n_mels, n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def init_leaf_state(self, batch, device, dtype) -> MelState:
        return MelState(torch.zeros(batch, self.n_fft - self.hop, device=device, dtype=dtype))

    def forward(self, audio: torch.Tensor, states: LeafStates | None = None) -> torch.Tensor:
        if audio.shape[-1] % self.hop:
            raise ValueError(f"{audio.shape[-1]} samples is not a multiple of the hop {self.hop}")
        state = self.leaf_state(states, audio)
        full = torch.cat([state.history, audio], dim=-1)  # [B, n_fft - hop + n]
        state.history = full[:, full.shape[-1] - (self.n_fft - self.hop):]
        frames = full.unfold(-1, self.n_fft, self.hop) * self.window  # [B, n / hop, n_fft]
        power = torch.fft.rfft(frames, dim=-1).abs().pow(2)  # [B, F, n_fft/2 + 1]
        mel = power @ self.fb  # [B, F, n_mels]
        # log10 with a floor, then Whisper's fixed affine scaling (without its utterance-level max).
        logmel = (torch.log10(mel.clamp_min(1e-10)) + 4.0) / 4.0
        return logmel.transpose(1, 2)

