"""The Whisper-style 128-bin log-mel at 100 frames/s that Step-Audio 2's audio encoder and its S3 tokenizer read.

One front end, two callers: the LLM's audio encoder right-pads the waveform with 479 zeros first, the S3 tokenizer
with none (golden SPEC.md §3). The Slaney filterbank is built here (librosa's formula, no librosa at run time) and
matches the reference's saved 128×201 matrix.
"""

from __future__ import annotations

import functools
import math

import torch

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
ENCODER_PAD = 479  # samples of zeros the LLM's encoder path appends; the S3 tokenizer appends none


def _hz_to_mel(freq: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = freq / f_sp
    log = min_log_mel + torch.log(torch.clamp(freq, min=min_log_hz) / min_log_hz) / logstep
    return torch.where(freq >= min_log_hz, log, linear)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=8)
def slaney_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_max: float | None = None) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] triangular filters on the Slaney scale with Slaney (area) normalisation."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_pts = torch.linspace(float(_hz_to_mel(torch.tensor(0.0, dtype=torch.float64))),
                             float(_hz_to_mel(torch.tensor(f_max, dtype=torch.float64))), n_mels + 2,
                             dtype=torch.float64)
    hz_pts = _mel_to_hz(mel_pts)
    widths = torch.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    weights *= (2.0 / (hz_pts[2:n_mels + 2] - hz_pts[:n_mels]))[:, None]
    return weights.to(torch.float32)


def log_mel(wave: torch.Tensor, n_mels: int = 128, pad: int = 0) -> torch.Tensor:
    """[..., samples] 16 kHz float waveform -> [..., n_mels, frames] normalised log-mel.

    frames = (samples + pad) // 160. Power STFT (periodic Hann 400, hop 160, centred reflect), last frame dropped,
    log10 floored at the clip's max − 8, then (x + 4) / 4 — Whisper's recipe.
    """
    if pad:
        wave = torch.nn.functional.pad(wave, (0, pad))
    window = torch.hann_window(N_FFT, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(wave, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec[..., :-1].abs() ** 2
    filters = slaney_filterbank(SAMPLE_RATE, N_FFT, n_mels).to(device=wave.device, dtype=wave.dtype)
    mel = filters @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    floor = logs.amax(dim=(-2, -1), keepdim=True) - 8.0
    return (torch.maximum(logs, floor) + 4.0) / 4.0
