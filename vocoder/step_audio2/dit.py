"""The DiT velocity estimator of the token2wav flow (SPEC2 §9.8; official names under ``decoder.estimator.``).

v(x_t, mu, spk, cond, t): channels [x, mu, spk over time, cond] (320) -> ``in_proj`` -> ``depth`` blocks, each
adaLN-modulated attention (per-head q/k LayerNorm, no positional encoding), causal conv block and GELU-tanh MLP ->
adaLN final layer -> 80 mel channels.

The streaming path (§10) gives every block a :class:`DiTBlockCache`: the K/V of earlier chunks stored
**newest chunk first** (order is irrelevant to attention, which has no positions, but it decides what the cache trim
keeps) and the last 2 input frames of each causal conv. Caches are per stream and per Euler step; the module itself
is read-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CONV_CONTEXT = 2  # causal Conv1d(k3): 2 frames of left context


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0, scale: float = 1000.0
                      ) -> torch.Tensor:
    """[cos(s f_i), sin(s f_i)], s = 1000 t, f_i = exp(-ln(max_period) i / (dim/2)) (cos first, SPEC2 §9.8.3)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (scale * t.to(torch.float32))[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


@dataclass
class DiTBlockCache:
    """One block's history for one Euler step of one stream: k/v (B, H, T, d_h) newest chunk first, and the last
    ``CONV_CONTEXT`` input frames of the two causal convs, (B, C, 2)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    conv1_tail: torch.Tensor | None = None
    conv2_tail: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def keep(self, head: int, tail: int) -> None:
        """Keep the first ``head`` and the last ``tail`` time entries of k/v (the §10 trim, applied as stored)."""
        if self.k is not None:
            self.k = torch.cat([self.k[:, :, :head], self.k[:, :, -tail:]], dim=2)
            self.v = torch.cat([self.v[:, :, :head], self.v[:, :, -tail:]], dim=2)


class DiTAttention(nn.Module):
    def __init__(self, hidden: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.to_q = nn.Linear(hidden, inner)
        self.to_k = nn.Linear(hidden, inner)
        self.to_v = nn.Linear(hidden, inner)
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-5)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-5)
        self.proj = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, cache: DiTBlockCache | None) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        q = self.q_norm(heads(self.to_q(x)))
        k = self.k_norm(heads(self.to_k(x)))
        v = heads(self.to_v(x))
        attn_mask = None
        if cache is not None:
            if cache.k is not None:  # [this chunk, cached past], no mask (SPEC2 §10)
                k, v = torch.cat([k, cache.k], dim=2), torch.cat([v, cache.v], dim=2)
            cache.k, cache.v = k, v  # newest first: this chunk now leads
        elif key_mask is not None and not bool(key_mask.all()):
            attn_mask = key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class CausalConvBlock(nn.Module):
    """Causal Conv1d(k3) -> LayerNorm -> Mish -> causal Conv1d(k3); keys ``block.1``, ``block.3``, ``block.6``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.ModuleDict({"1": nn.Conv1d(channels, channels, 3), "3": nn.LayerNorm(channels, eps=1e-5),
                                    "6": nn.Conv1d(channels, channels, 3)})

    @staticmethod
    def _with_context(x: torch.Tensor, tail: torch.Tensor | None) -> torch.Tensor:
        return F.pad(x, (CONV_CONTEXT, 0)) if tail is None else torch.cat([tail, x], dim=2)

    def forward(self, x: torch.Tensor, cache: DiTBlockCache | None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); with a cache, the convs continue from the previous chunk's frames."""
        h = self._with_context(x.transpose(1, 2), None if cache is None else cache.conv1_tail)
        if cache is not None:
            cache.conv1_tail = h[:, :, -CONV_CONTEXT:]
        h = self.block["1"](h)
        h = F.mish(self.block["3"](h.transpose(1, 2))).transpose(1, 2)
        h = self._with_context(h, None if cache is None else cache.conv2_tail)
        if cache is not None:
            cache.conv2_tail = h[:, :, -CONV_CONTEXT:]
        return self.block["6"](h).transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, hidden: int, ratio: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, int(hidden * ratio))
        self.fc2 = nn.Linear(int(hidden * ratio), hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, n_heads: int, head_dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.attn = DiTAttention(hidden, n_heads, head_dim)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.mlp = MLP(hidden, mlp_ratio)
        self.norm3 = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.conv = CausalConvBlock(hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 9 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor | None = None,
                cache: DiTBlockCache | None = None) -> torch.Tensor:
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         shift_conv, scale_conv, gate_conv) = self.adaLN_modulation(c).chunk(9, dim=-1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), key_mask, cache)
        x = x + gate_conv[:, None] * self.conv(modulate(self.norm3(x), shift_conv, scale_conv), cache)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, in_channels: int = 320, out_channels: int = 80, hidden_size: int = 512, depth: int = 16,
                 num_heads: int = 8, head_dim: int = 64, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.in_proj = nn.Linear(in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, head_dim, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, mu: torch.Tensor, t: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor, caches: list[DiTBlockCache] | None = None) -> torch.Tensor:
        """x, mu, cond (B, 80, T); mask (B, 1, T) or None; t (B,); spks (B, 80) -> velocity (B, 80, T).

        ``caches`` (one per block) switches to the streaming step: no mask, attention over [chunk, cached]."""
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[2]), cond], dim=1).transpose(1, 2)
        h = self.in_proj(h)
        c = self.t_embedder(t)
        key_mask = None if (mask is None or caches is not None) else mask[:, 0].bool()
        for i, block in enumerate(self.blocks):
            h = block(h, c, key_mask, None if caches is None else caches[i])
        return self.final_layer(h, c).transpose(1, 2)
