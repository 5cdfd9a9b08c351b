"""The NSF harmonic source of the HiFT vocoders: f0 per sample -> excitation signal s (B, 1, L).

Two sine generators exist (Step-Audio 2 SPEC §11 "Source", Step-Audio v1 SPEC §8.9 "Source"). They share the
harmonic stack f0·k (k = 1..9), the voiced flag f0 > 10, the noise mix and the Linear(9→1) + tanh merge; they differ
only in how the phase is accumulated and where the random initial phase enters:

- ``"24k"`` (Step-Audio 2, EditX): rad = (f·k / sr) mod 1, a U[0,1) offset on the first sample, the phase increments
  decimated by the upsample scale (linear interpolation), cumulated × 2π, × scale and interpolated back up.
- ``"v1"`` (Step-Audio-TTS-3B, 22.05 kHz): phase = 2π·((cumsum f·k / sr) mod 1) + θ, θ ~ U(−π, π) per harmonic.

The three random draws (initial phases, the noise n, and a third normal draw the reference makes and discards) come
from a :class:`NoiseDraws` object, so the goldens reproduce exactly with their saved draws (:class:`SavedDraws`) and a
seeded :class:`TorchDraws` consumes the same random stream as the reference would.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

NSF_VARIANTS = ("24k", "v1")


class NoiseDraws(Protocol):
    """Where the source's random numbers come from (one object may serve many calls)."""

    def uniform(self, shape: tuple[int, ...], low: float, high: float, device: torch.device) -> torch.Tensor: ...

    def normal(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor: ...

    def discard_normal(self, shape: tuple[int, ...], device: torch.device) -> None: ...


class TorchDraws:
    """Fresh draws from torch's RNG (``generator`` or the global one), in the reference's order and shapes."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def uniform(self, shape, low, high, device):
        return low + torch.rand(shape, generator=self.generator, device=device) * (high - low)

    def normal(self, shape, device):
        return torch.randn(shape, generator=self.generator, device=device)

    def discard_normal(self, shape, device):
        # The reference draws a noise tensor it never uses; drawing it keeps a seeded stream in step with it.
        torch.randn(shape, generator=self.generator, device=device)


class SavedDraws:
    """Replays given draws: ``phases`` for the uniform draw and ``sine_noise`` for the noise n (shapes checked).

    ``phases`` is the raw draw: the source zeroes harmonic 1's entry itself, as the reference does after drawing.
    """

    def __init__(self, phases: torch.Tensor, sine_noise: torch.Tensor) -> None:
        self.phases = phases
        self.sine_noise = sine_noise

    @staticmethod
    def _checked(name: str, value: torch.Tensor, shape: tuple[int, ...], device) -> torch.Tensor:
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"saved {name} has shape {tuple(value.shape)}, the source needs {tuple(shape)}")
        return value.to(device=device, dtype=torch.float32)

    def uniform(self, shape, low, high, device):
        return self._checked("phases", self.phases, shape, device)

    def normal(self, shape, device):
        return self._checked("sine_noise", self.sine_noise, shape, device)

    def discard_normal(self, shape, device):
        return None


class NSFSource(nn.Module):
    """SourceModuleHnNSF: harmonic sines + noise from f0, merged by ``l_linear`` (Linear(H→1)) and tanh.

    Parameters: ``l_linear.weight`` (1, H), ``l_linear.bias`` (1). The phase path runs in float32 whatever the
    weights' dtype: the accumulated phase reaches thousands of radians, where half precision is useless.
    """

    def __init__(self, sampling_rate: int, n_harmonics: int, upsample_scale: int, variant: str = "24k",
                 sine_amp: float = 0.1, noise_std: float = 0.003, voiced_threshold: float = 10.0) -> None:
        super().__init__()
        if variant not in NSF_VARIANTS:
            raise ValueError(f"unknown NSF variant {variant!r}; expected one of {NSF_VARIANTS}")
        self.sampling_rate = sampling_rate
        self.n_harmonics = n_harmonics  # harmonic_num + 1: the fundamental and its overtones
        self.upsample_scale = upsample_scale
        self.variant = variant
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(n_harmonics, 1)

    def _noise_amp(self, uv: torch.Tensor) -> torch.Tensor:
        return uv * self.noise_std + (1 - uv) * self.sine_amp / 3

    def _sines_24k(self, f0: torch.Tensor, draws: NoiseDraws) -> torch.Tensor:
        """f0 (B, L) -> noisy harmonic sines (B, L, H), SPEC2 §11 steps 2-7."""
        batch, _ = f0.shape
        k = torch.arange(1, self.n_harmonics + 1, device=f0.device, dtype=f0.dtype)
        rad = (f0[..., None] * k / self.sampling_rate) % 1
        rand_ini = draws.uniform((batch, self.n_harmonics), 0.0, 1.0, f0.device).clone()
        rand_ini[:, 0] = 0  # the fundamental starts at phase 0
        rad[:, 0, :] = rad[:, 0, :] + rand_ini
        # Decimate the phase increments, accumulate at the low rate, and interpolate the phase back up: this is
        # the reference's way to keep the float32 cumsum short (scale-factor semantics, align_corners=False).
        rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / self.upsample_scale, mode="linear")
        phase = torch.cumsum(rad, dim=-1) * 2 * math.pi
        phase = F.interpolate(phase * self.upsample_scale, scale_factor=self.upsample_scale, mode="linear")
        sines = torch.sin(phase).transpose(1, 2) * self.sine_amp
        uv = (f0 > self.voiced_threshold).to(f0.dtype)[..., None]
        noise = self._noise_amp(uv) * draws.normal(tuple(sines.shape), f0.device)
        return sines * uv + noise

    def _sines_v1(self, f0: torch.Tensor, draws: NoiseDraws) -> torch.Tensor:
        """f0 (B, L) -> noisy harmonic sines (B, L, H), SPEC v1 §8.9 steps 1-3."""
        batch, length = f0.shape
        f0 = f0[:, None, :]
        k = torch.arange(1, self.n_harmonics + 1, device=f0.device, dtype=f0.dtype)[None, :, None]
        increments = f0 * k / self.sampling_rate
        theta = 2 * math.pi * (torch.cumsum(increments, dim=-1) % 1)
        phase_vec = draws.uniform((batch, self.n_harmonics, 1), -math.pi, math.pi, f0.device).clone()
        phase_vec[:, 0, :] = 0  # the raw draw is saved; the fundamental's entry is zeroed after drawing
        sines = self.sine_amp * torch.sin(theta + phase_vec)
        uv = (f0 > self.voiced_threshold).to(f0.dtype)
        noise = self._noise_amp(uv) * draws.normal((batch, self.n_harmonics, length), f0.device)
        return (sines * uv + noise).transpose(1, 2)

    def forward(self, f0_per_sample: torch.Tensor, draws: NoiseDraws | None = None) -> torch.Tensor:
        """f0 (B, L) in Hz at the audio rate -> source s (B, 1, L) in the module's dtype."""
        draws = TorchDraws() if draws is None else draws
        f0 = f0_per_sample.float()
        sines = self._sines_24k(f0, draws) if self.variant == "24k" else self._sines_v1(f0, draws)
        merged = torch.tanh(F.linear(sines, self.l_linear.weight.float(), self.l_linear.bias.float()))
        draws.discard_normal((f0.shape[0], f0.shape[1], 1), f0.device)
        return merged.transpose(1, 2).to(self.l_linear.weight.dtype)
