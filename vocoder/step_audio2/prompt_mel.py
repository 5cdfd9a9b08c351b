"""The voice prompt's 80-bin log-mel at 24 kHz / hop 480 that conditions the Step-Audio 2 flow (SPEC2 §9).

Reflect-pad 720 samples on both sides, non-centred STFT (n_fft 1920, hop 480, periodic Hann 1920), magnitude
sqrt(re² + im² + 1e-9), Slaney mel 80 × 961 over 0–8000 Hz, natural log of max(·, 1e-5), time-major (B, T, 80).
The filterbank is :func:`voxcore.whisper_mel.slaney_filterbank` (librosa's Slaney formula; it matches the saved
``mel_filterbank_24k_80x961`` to 2e-9). :func:`fit_prompt_mel` then sizes the mel to 2 frames per prompt code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from voxcore.whisper_mel import slaney_filterbank

SAMPLE_RATE = 24_000
N_FFT = 1920
HOP = 480
N_MELS = 80
F_MAX = 8000.0
FRAMES_PER_CODE = 2  # 25 codes/s -> 50 mel frames/s


def prompt_mel_24k(wave: torch.Tensor) -> torch.Tensor:
    """24 kHz waveform (L,) or (B, L) -> log-mel (B, frames, 80), frames = (L + 2·720 − 1920) // 480 + 1."""
    wave = wave.float()
    if wave.dim() == 1:
        wave = wave[None]
    pad = (N_FFT - HOP) // 2
    wave = F.pad(wave[:, None, :], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(N_FFT, device=wave.device, dtype=wave.dtype)
    spec = torch.view_as_real(torch.stft(wave, N_FFT, HOP, N_FFT, window=window, center=False,
                                         return_complex=True))
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    filters = slaney_filterbank(SAMPLE_RATE, N_FFT, N_MELS, F_MAX).to(device=wave.device, dtype=wave.dtype)
    mel = torch.log(torch.clamp(filters @ magnitude, min=1e-5))
    return mel.transpose(1, 2)


def fit_prompt_mel(mel: torch.Tensor, n_prompt_codes: int) -> torch.Tensor:
    """(B, T, 80) -> (B, 2·P, 80): truncate, or right-pad by repeating the last frame."""
    target = FRAMES_PER_CODE * n_prompt_codes
    if mel.shape[1] >= target:
        return mel[:, :target]
    tail = mel[:, -1:].expand(-1, target - mel.shape[1], -1)
    return torch.cat([mel, tail], dim=1)
