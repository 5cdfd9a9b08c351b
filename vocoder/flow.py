"""Token -> mel: causal conditional flow matching (CosyVoice-style) over dual-codebook tokens.

1. `DualCodebookEmbedding` realigns each 120 ms group (2 linguistic @16.7 Hz + 3 semantic @25 Hz)
   onto 6 frames at 50 Hz: a linguistic token covers 3 frames, a semantic token 2, plus a learned
   phase embedding so the model knows where inside the group a frame sits.
2. A causal encoder (conv + sliding-window transformer) turns them into `mu`, upsampled x2 to the
   100 Hz mel rate (12 mel frames per group).
3. A causal dilated-conv estimator predicts the velocity v(x_t, mu, t); a few Euler steps carry noise
   (t=0) to mel (t=1) on CosyVoice's cosine time grid. Every Euler step keeps its own conv history,
   because the past frames it convolves are that step's x_t, not the final mel.

Noise comes from `hashed_normal(seed, frame)`, so a streamed session reproduces the offline mel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from voxcore.interleave import LING_PER_GROUP, SEM_PER_GROUP
from voxcore.streaming import (CausalTransformer, LeafStates, StreamingConv1d, bind_state_keys, init_states,
                               reset_slots)

# ------------------------------------------------------------------------------------------ noise
# Counter-based Gaussian noise, the flow's start point: a pure function of (seed, frame, bin). A
# streamed session must draw exactly the noise the offline run draws for the same frames, whatever the
# chunking, and slots of one batch must not share a generator. Sequential RNGs (torch.Generator) give
# neither for free, so each value is hashed from its coordinates (CosyVoice gets the same property from
# a fixed pre-drawn noise table sliced by position; a hash needs no table and has no capacity limit).

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32 in int64, split in 16-bit halves so nothing overflows."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A well-mixed 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding uint32 values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hashed_normal(seed: torch.Tensor, frames: torch.Tensor, channels: int,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise [B, channels, T] for seeds [B] and absolute frame indices frames [B, T].

    Value (b, c, t) depends only on (seed[b], frames[b, t], c): chunking and batching cannot change it.
    """
    seed = seed.to(torch.int64)
    # Fold all 64 seed bits in without multiplying (int64 products could overflow).
    seed_mix = hash32(hash32(seed & _M32) ^ ((seed >> 32) & _M32))[:, None, None]  # [B, 1, 1]
    chan = torch.arange(channels, device=frames.device, dtype=torch.int64)[None, :, None]  # [1, C, 1]
    counter = (frames.to(torch.int64)[:, None, :] * channels + chan) * 2  # [B, C, T], two draws each
    u1 = hash32(hash32(counter ^ seed_mix) + seed_mix)
    u2 = hash32(hash32((counter + 1) ^ seed_mix) + seed_mix)
    # Box-Muller in float64: u1 in (0, 1] keeps the log finite.
    r = torch.sqrt(-2.0 * torch.log((u1.to(torch.float64) + 1.0) / 4294967296.0))
    z = r * torch.cos((2.0 * math.pi / 4294967296.0) * u2.to(torch.float64))
    return z.to(dtype)


# ------------------------------------------------------------------------------------------ model
FRAMES_PER_GROUP = LING_PER_GROUP * SEM_PER_GROUP  # 6 common frames (50 Hz) per 120 ms


@dataclass(frozen=True)
class FlowConfig:
    """Architecture sizes of the token -> mel model (saved with its weights)."""

    n_linguistic: int = 1024
    n_semantic: int = 4096
    dim: int = 512
    layers: int = 6
    heads: int = 8
    window: int = 150  # 50 Hz frames of attention context (3 s)
    n_mels: int = 80
    mel_upsample: int = 2  # 50 Hz -> 100 Hz mel frames
    est_channels: int = 256
    est_layers: int = 8  # dilations cycle 1, 2, 4, 8
    time_dim: int = 64
    steps: int = 10  # Euler steps (CosyVoice uses 10)

    @classmethod
    def tiny(cls) -> "FlowConfig":
        return cls(dim=32, layers=2, heads=2, window=30, est_channels=32, est_layers=4, time_dim=16, steps=3)

    @property
    def mel_frames_per_group(self) -> int:
        return FRAMES_PER_GROUP * self.mel_upsample


class DualCodebookEmbedding(nn.Module):
    """linguistic [B, 2G], semantic [B, 3G] -> [B, 6G, D] on the common 50 Hz frame grid."""

    def __init__(self, n_linguistic: int, n_semantic: int, dim: int):
        super().__init__()
        self.linguistic = nn.Embedding(n_linguistic, dim)
        self.semantic = nn.Embedding(n_semantic, dim)
        self.phase = nn.Embedding(FRAMES_PER_GROUP, dim)

    def forward(self, linguistic: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        groups = linguistic.shape[-1] // LING_PER_GROUP
        if linguistic.shape[-1] != groups * LING_PER_GROUP or semantic.shape[-1] != groups * SEM_PER_GROUP:
            raise ValueError("need whole 120 ms groups: 2G linguistic and 3G semantic tokens")
        ling = self.linguistic(linguistic).repeat_interleave(SEM_PER_GROUP, dim=1)  # [B, 6G, D]
        sem = self.semantic(semantic).repeat_interleave(LING_PER_GROUP, dim=1)  # [B, 6G, D]
        phase = self.phase(torch.arange(FRAMES_PER_GROUP, device=linguistic.device)).repeat(groups, 1)
        return ling + sem + phase


class EstimatorBlock(nn.Module):
    """Causal dilated conv -> per-frame channel LayerNorm with time FiLM -> GELU -> 1x1, residual.

    The norm is over channels of each frame only: GroupNorm would mix time and break causality.
    """

    def __init__(self, channels: int, dilation: int, time_dim: int):
        super().__init__()
        self.conv = StreamingConv1d(channels, channels, 3, dilation=dilation)
        self.norm = nn.LayerNorm(channels, elementwise_affine=False)
        self.film = nn.Linear(time_dim, 2 * channels)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, states: LeafStates | None) -> torch.Tensor:
        """x [B, C, T], temb [B, time_dim] -> [B, C, T]."""
        scale, shift = self.film(temb)[:, :, None].chunk(2, dim=1)  # [B, C, 1] each
        y = self.norm(self.conv(x, states).transpose(1, 2)).transpose(1, 2)
        return x + self.mix(F.gelu(y * (1 + scale) + shift))


class VelocityEstimator(nn.Module):
    """v(x_t [B, M, T], mu [B, M, T], t [B]) -> [B, M, T], causal in T."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.time_dim = cfg.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, cfg.time_dim), nn.SiLU(),
                                      nn.Linear(cfg.time_dim, cfg.time_dim))
        self.inp = StreamingConv1d(2 * cfg.n_mels, cfg.est_channels, 3)
        self.blocks = nn.ModuleList(EstimatorBlock(cfg.est_channels, 2 ** (i % 4), cfg.time_dim)
                                    for i in range(cfg.est_layers))
        self.out = nn.Conv1d(cfg.est_channels, cfg.n_mels, 1)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        ang = 1000.0 * t[:, None] * freqs  # [B, half]; x1000 as in Grad-TTS/CosyVoice
        return self.time_mlp(torch.cat([ang.sin(), ang.cos()], dim=-1))

    def forward(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                states: LeafStates | None = None) -> torch.Tensor:
        temb = self.time_embedding(t)
        h = self.inp(torch.cat([x, mu], dim=1), states)
        for block in self.blocks:
            h = block(h, temb, states)
        return self.out(h)


@dataclass
class FlowState:
    """Per-session state of `TokenToMel`; tensors have a leading slot dim B."""

    encoder: LeafStates  # encoder convs / KV caches
    steps: list[LeafStates]  # estimator conv histories, one set per Euler step
    seed: torch.Tensor  # [B] long: this slot's noise seed
    pos: torch.Tensor  # [B] long: mel frames produced since the slot's reset

    def reset(self, mask: torch.Tensor, seeds: torch.Tensor | int = 0) -> None:
        """New sessions in slots `mask` [B], each with its noise seed (tensor [n_reset] or int)."""
        reset_slots(self.encoder, mask)
        for s in self.steps:
            reset_slots(s, mask)
        with torch.inference_mode():
            self.pos[mask] = 0
            self.seed[mask] = torch.as_tensor(seeds, dtype=torch.long, device=self.seed.device)


class TokenToMel(nn.Module):
    """Dual-codebook tokens -> 80-bin log-mel at 100 Hz, causal and streamable in batch slots."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = DualCodebookEmbedding(cfg.n_linguistic, cfg.n_semantic, cfg.dim)
        self.encoder = nn.ModuleDict({
            "conv": StreamingConv1d(cfg.dim, cfg.dim, 3),
            "transformer": CausalTransformer(cfg.dim, cfg.layers, cfg.heads, cfg.window),
            "up_conv": StreamingConv1d(cfg.dim, cfg.dim, 3),
        })
        self.to_mu = nn.Linear(cfg.dim, cfg.n_mels)
        self.estimator = VelocityEstimator(cfg)
        # Two disjoint state namespaces: the encoder runs once per chunk, the estimator once per step.
        bind_state_keys(self.encoder)
        bind_state_keys(self.estimator)

    def time_grid(self) -> list[float]:
        """CosyVoice's cosine schedule: more, smaller steps near t=0 where the flow bends most."""
        n = self.cfg.steps
        return [1.0 - math.cos(0.5 * math.pi * k / n) for k in range(n + 1)]

    def init_state(self, batch: int = 1, seeds: torch.Tensor | int = 0) -> FlowState:
        device = self.to_mu.weight.device
        seed = torch.as_tensor(seeds, dtype=torch.long, device=device).expand(batch).clone()
        return FlowState(init_states(self.encoder, batch, device),
                         [init_states(self.estimator, batch, device) for _ in range(self.cfg.steps)],
                         seed, torch.zeros(batch, dtype=torch.long, device=device))

    def encode(self, linguistic: torch.Tensor, semantic: torch.Tensor, states: LeafStates | None) -> torch.Tensor:
        """Tokens -> mu [B, n_mels, 12G]."""
        enc = self.encoder
        x = self.embed(linguistic, semantic).transpose(1, 2)  # [B, D, 6G]
        x = x + F.gelu(enc["conv"](x, states))
        x = enc["transformer"](x.transpose(1, 2), states).transpose(1, 2)  # [B, D, 6G]
        x = x.repeat_interleave(self.cfg.mel_upsample, dim=2)  # [B, D, 12G]
        x = x + F.gelu(enc["up_conv"](x, states))
        return self.to_mu(x.transpose(1, 2)).transpose(1, 2)

    @torch.inference_mode()
    def forward(self, linguistic: torch.Tensor, semantic: torch.Tensor, state: FlowState | None = None,
                seeds: torch.Tensor | int = 0) -> torch.Tensor:
        """linguistic [B, 2G], semantic [B, 3G] -> mel [B, n_mels, 12G].

        Offline when `state` is None (noise from `seeds`); otherwise continues each slot's stream.
        """
        if state is None:
            state = self.init_state(linguistic.shape[0], seeds)
        mu = self.encode(linguistic, semantic, state.encoder)  # [B, M, T]
        T = mu.shape[-1]
        frames = state.pos[:, None] + torch.arange(T, device=mu.device)  # [B, T]
        x = hashed_normal(state.seed, frames, self.cfg.n_mels, mu.dtype)
        grid = self.time_grid()
        for k in range(self.cfg.steps):
            t = torch.full((mu.shape[0],), grid[k], device=mu.device, dtype=mu.dtype)
            x = x + (grid[k + 1] - grid[k]) * self.estimator(x, mu, t, state.steps[k])
        state.pos = state.pos + T
        return x
