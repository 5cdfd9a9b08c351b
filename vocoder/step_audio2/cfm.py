"""Conditional flow matching sampler of the token2wav flow: classifier-free-guided Euler on a cosine time grid
(SPEC2 §9.7, same loop in the streaming path §10).

t_k = 1 - cos(pi/2 · k/N); each step evaluates the estimator once on a batch of 2 (row 0 conditioned on
(mu, spk, cond), row 1 on zeros) and moves x by dt · ((1 + r) v_0 - r v_1), r = the CFG rate (0.7).

The start noise is never drawn here: the caller passes x0, a slice of the flow's noise buffer
(:func:`default_noise` reproduces the reference's; any other can be injected), so goldens and streams reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

NOISE_FRAMES = 30000  # the reference's pre-drawn buffer length (1, 80, 30000)
NOISE_SEED = 2024


def default_noise(n_mels: int = 80, frames: int = NOISE_FRAMES, seed: int = NOISE_SEED) -> torch.Tensor:
    """The reference CFM's noise buffer: standard normals (1, n_mels, frames) drawn on the CPU right after seeding."""
    return torch.randn(1, n_mels, frames, generator=torch.Generator().manual_seed(seed), device="cpu")


def cosine_t_span(n_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_steps + 1,) float32 grid 1 - cos(pi/2 · linspace(0, 1))."""
    t = torch.linspace(0, 1, n_steps + 1, device=device, dtype=torch.float32)
    return 1 - torch.cos(t * 0.5 * math.pi)


# estimator(x, mask, mu, t, spks, cond, step_index) -> velocity; all batch 2 (cond row, uncond row)
Estimator = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int],
                     torch.Tensor]


def cfg_euler(estimator: Estimator, x0: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
              t_span: torch.Tensor, cfg_rate: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from x0 (B, C, T) at t_span[0] to t_span[-1]; mu/cond (B, C, T), spks (B, C), mask (B, 1, T).

    The estimator sees batch 2B: the B conditioned rows, then the B unconditioned ones."""
    x = x0
    b = x0.shape[0]
    t = t_span[0]
    dt = t_span[1] - t_span[0]
    zeros_mu, zeros_spk, zeros_cond = torch.zeros_like(mu), torch.zeros_like(spks), torch.zeros_like(cond)
    mu2, spk2, cond2 = torch.cat([mu, zeros_mu]), torch.cat([spks, zeros_spk]), torch.cat([cond, zeros_cond])
    mask2 = None if mask is None else torch.cat([mask, mask])
    n_steps = t_span.numel() - 1
    for step in range(n_steps):
        # t advances by t + dt (not by indexing t_span): the reference's accumulation, kept for bitwise-near steps
        v = estimator(torch.cat([x, x]), mask2, mu2, t.expand(2 * b).to(x.dtype), spk2, cond2, step)
        v_cond, v_uncond = v[:b], v[b:]
        x = x + dt * ((1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond)
        t = t + dt
        if step + 1 < n_steps:
            dt = t_span[step + 2] - t
    return x
