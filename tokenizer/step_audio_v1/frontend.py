"""The Paraformer front end of Step-Audio's linguistic stream: Kaldi fbank -> LFR (7, 6) -> CMVN (SPEC §3.2).

Written from the golden SPEC's parameters (torchaudio ``compliance.kaldi.fbank`` semantics, which the reference
calls; torchaudio itself is not a dependency here):

- the 16 kHz waveform in [-1, 1] is scaled to the int16 range (x 32768);
- 25 ms frames every 10 ms with ``snip_edges`` (T = floor((L - 400) / 160) + 1, 0 when L < 400); per frame: DC
  offset removed, pre-emphasis 0.97 (the first sample is its own predecessor), symmetric Hamming window, zero
  padding to 512, power spectrum, 80 Kaldi-mel triangles over 20 Hz .. 8 kHz, natural log floored at float32 eps;
- LFR: 3 copies of frame 0 in front, then every 6th row starts a 7-row window flattened to 560 values; windows
  running past the end repeat the last frame, so an utterance gives ceil(T / 6) rows;
- CMVN from the model's ``am.mvn``: y = (x + shift) * rescale.

Dither: FunASR's class default is 1.0 (Gaussian noise per call, tokens not reproducible) and the real model's value
is unknown (SPEC §12). The goldens use 0 and so does this port: a tokenizer whose codes change from run to run
cannot be tested or cached, so no noise is ever added.

`FrontendStream` is the chunked form the reference runs (un-framed tail samples kept, an LFR splice cache that
starts as 3 copies of the first frame, end padding only on the final call). SPEC §3.2 shows it equals the offline
result, which the tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

INT16_SCALE = 32768.0
LOG_FLOOR = torch.finfo(torch.float32).eps  # 1.1920929e-07, Kaldi's floor before the log


@dataclass(frozen=True)
class FrontendConfig:
    """FunASR ``frontend_conf`` of the Paraformer model (the values the reference uses)."""

    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    lfr_m: int = 7
    lfr_n: int = 6
    low_freq: float = 20.0
    preemphasis: float = 0.97

    @property
    def frame_length(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def frame_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def n_fft(self) -> int:
        return 1 << (self.frame_length - 1).bit_length()  # Kaldi rounds the frame up to a power of two

    @property
    def feature_dim(self) -> int:
        return self.lfr_m * self.n_mels

    @property
    def lfr_left(self) -> int:
        return (self.lfr_m - 1) // 2

    @classmethod
    def from_funasr(cls, frontend_conf: dict) -> FrontendConfig:
        """From a FunASR ``config.yaml`` ``frontend_conf`` (``fs``, ``n_mels``, ``frame_length``, ...).

        ``window`` must be hamming; ``dither`` is read but never applied (module docstring)."""
        if frontend_conf.get("window", "hamming") != "hamming":
            raise ValueError(f"only the hamming window is supported, got {frontend_conf['window']!r}")
        return cls(sample_rate=int(frontend_conf.get("fs", 16000)), n_mels=int(frontend_conf.get("n_mels", 80)),
                   frame_length_ms=float(frontend_conf.get("frame_length", 25)),
                   frame_shift_ms=float(frontend_conf.get("frame_shift", 10)),
                   lfr_m=int(frontend_conf.get("lfr_m", 7)), lfr_n=int(frontend_conf.get("lfr_n", 6)))


def kaldi_mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    """Kaldi's mel scale, 1127 ln(1 + f / 700)."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_freq: float = 20.0,
                    high_freq: float | None = None) -> torch.Tensor:
    """Triangular Kaldi mel filters [n_mels, n_fft // 2 + 1]; the Nyquist column is zero (SPEC §3.2).

    Triangles are equally spaced on the mel scale between ``low_freq`` and ``high_freq`` (Nyquist by default),
    each rising from its left edge to its centre and falling to its right edge, evaluated at the FFT bin
    frequencies 0 .. (n_fft / 2 - 1) * sr / n_fft."""
    high_freq = sample_rate / 2 if high_freq is None else high_freq
    mel_low, mel_high = kaldi_mel(low_freq), kaldi_mel(high_freq)
    delta = (mel_high - mel_low) / (n_mels + 1)
    index = torch.arange(n_mels, dtype=torch.float32).unsqueeze(1)
    left = mel_low + index * delta
    centre = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    bin_width = sample_rate / n_fft
    mel = kaldi_mel(bin_width * torch.arange(n_fft // 2, dtype=torch.float32)).unsqueeze(0)
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.cat([banks, banks.new_zeros(n_mels, 1)], dim=1)


class LinguisticFrontend(nn.Module):
    """fbank -> LFR -> CMVN for one 16 kHz utterance; the CMVN vectors are its (loaded) buffers."""

    def __init__(self, config: FrontendConfig | None = None) -> None:
        super().__init__()
        self.config = config or FrontendConfig()
        dim = self.config.feature_dim
        self.register_buffer("cmvn_shift", torch.zeros(dim))
        self.register_buffer("cmvn_rescale", torch.ones(dim))
        self.derive_buffers()

    def derive_buffers(self) -> None:
        """The window and mel filters are computed, never loaded."""
        c = self.config
        window = torch.hamming_window(c.frame_length, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        banks = kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate, c.low_freq)
        self.register_buffer("mel_banks", banks, persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Kaldi frames (snip_edges) in ``num_samples`` samples."""
        c = self.config
        return 0 if num_samples < c.frame_length else (num_samples - c.frame_length) // c.frame_shift + 1

    def fbank(self, wave: torch.Tensor) -> torch.Tensor:
        """[L] waveform in [-1, 1] -> [T, n_mels] log mel energies (float32)."""
        c = self.config
        x = wave.to(device=self.window.device, dtype=torch.float32).reshape(-1) * INT16_SCALE
        if self.num_frames(x.numel()) == 0:
            return x.new_zeros(0, c.n_mels)
        frames = x.unfold(0, c.frame_length, c.frame_shift)
        frames = frames - frames.mean(dim=1, keepdim=True)
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = (frames - c.preemphasis * previous) * self.window
        power = torch.fft.rfft(frames, n=c.n_fft).abs().pow(2.0)
        energies = power @ self.mel_banks.T
        return torch.clamp(energies, min=LOG_FLOOR).log()

    def lfr(self, fbank: torch.Tensor) -> torch.Tensor:
        """[T, n_mels] -> [ceil(T / lfr_n), lfr_m * n_mels] stacked low-frame-rate rows (no CMVN)."""
        c = self.config
        total = fbank.shape[0]
        if total == 0:
            return fbank.new_zeros(0, c.feature_dim)
        rows = -(-total // c.lfr_n)
        needed = (rows - 1) * c.lfr_n + c.lfr_m
        right = max(0, needed - (total + c.lfr_left))
        padded = torch.cat([fbank[:1].expand(c.lfr_left, -1), fbank, fbank[-1:].expand(right, -1)])
        index = torch.arange(rows, device=fbank.device).unsqueeze(1) * c.lfr_n + torch.arange(c.lfr_m,
                                                                                              device=fbank.device)
        return padded[index].reshape(rows, c.feature_dim)

    def apply_cmvn(self, features: torch.Tensor) -> torch.Tensor:
        return (features + self.cmvn_shift) * self.cmvn_rescale

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Offline: [L] waveform -> [ceil(T / 6), 560] CMVN'd LFR features."""
        return self.apply_cmvn(self.lfr(self.fbank(wave)))

    def stream(self) -> FrontendStream:
        return FrontendStream(self)


class FrontendStream:
    """The chunked front end: ``accept(samples, is_final)`` -> the CMVN'd LFR rows those samples complete."""

    def __init__(self, frontend: LinguisticFrontend) -> None:
        self.frontend = frontend
        self.pending = torch.zeros(0, device=frontend.window.device)  # samples not yet covered by a frame start
        self.splice: torch.Tensor | None = None  # fbank rows (after the 3 leading copies) not yet consumed by LFR
        self.finished = False

    def accept(self, samples: torch.Tensor, is_final: bool = False) -> torch.Tensor:
        if self.finished:
            raise RuntimeError("the front-end stream already had its final call")
        fe, c = self.frontend, self.frontend.config
        self.pending = torch.cat([self.pending, samples.to(self.pending).reshape(-1)])
        frames = fe.num_frames(self.pending.numel())
        if frames:
            fb = fe.fbank(self.pending[: (frames - 1) * c.frame_shift + c.frame_length])
            self.pending = self.pending[frames * c.frame_shift:]
            head = fb[:1].expand(c.lfr_left, -1) if self.splice is None else self.splice
            self.splice = torch.cat([head, fb])
        out: list[torch.Tensor] = []
        while self.splice is not None and self.splice.shape[0] >= c.lfr_m:
            out.append(self.splice[: c.lfr_m].reshape(-1))
            self.splice = self.splice[c.lfr_n:]
        if is_final:
            self.finished = True
            # A window still starts on a real frame while more than lfr_left rows remain (offline: ceil(T / n)).
            while self.splice is not None and self.splice.shape[0] > c.lfr_left:
                short = c.lfr_m - self.splice.shape[0]
                window = torch.cat([self.splice, self.splice[-1:].expand(max(0, short), -1)])[: c.lfr_m]
                out.append(window.reshape(-1))
                self.splice = self.splice[c.lfr_n:]
        if not out:
            return self.pending.new_zeros(0, c.feature_dim)
        return fe.apply_cmvn(torch.stack(out))
