"""Transformer building blocks (Qwen2 style): RMSNorm, rotary embedding, GQA attention, SwiGLU MLP.

Every attention call takes explicit ``positions [B, T]`` and, when decoding, a preallocated
per-layer KV buffer that is written at those positions. Attention always masks by position
(``key_pos <= query_pos``), never by "how much of the cache is filled": entries beyond a slot's
length are stale (from rejected drafts or an earlier session) and are masked until overwritten.
That is what makes rollback free (only the length moves) and keeps shapes static.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.config import LMConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias, no mean subtraction)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 at least: half-precision sums of squares overflow.
        dtype = x.dtype
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class Rotary(nn.Module):
    """RoPE tables ``[max_seq_len, head_dim]`` in the HF "rotate half" layout (Qwen2 weights expect it)."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self.derive_buffers()

    def derive_buffers(self) -> None:
        """The tables from the sizes (again after a meta-device build; see voxcore.strict_load)."""
        head_dim, theta = self.head_dim, self.theta
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        ang = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float64), inv)  # [S, Dh/2]
        ang = torch.cat([ang, ang], dim=-1)                                      # [S, Dh]
        # Not persistent: derived from the config, never part of a checkpoint.
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, 1, T, Dh] (broadcast over heads)."""
        return (self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Dh] rotated by the per-position angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Causal mask by position: q_pos [B, T], k_pos [B, S] or [S] -> bool [B, 1, T, S]."""
    if k_pos.dim() == 1:
        k_pos = k_pos.unsqueeze(0)
    return k_pos[:, None, None, :] <= q_pos[:, None, :, None]


class LayerKV:
    """One layer's KV buffers, ``k, v [B, H_kv, S, Dh]`` (views into a :class:`runtime.state.KVCache`)."""

    __slots__ = ("k", "v")

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v

    def write(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H_kv, T, Dh] at positions [B, T]; return the whole buffers [B, H_kv, S, Dh]."""
        b, h, t, d = k.shape
        idx = positions[:, None, :, None].expand(b, h, t, d)
        self.k.scatter_(2, idx, k.to(self.k.dtype))
        self.v.scatter_(2, idx, v.to(self.v.dtype))
        return self.k, self.v


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and optional q/k/v bias (Qwen2 parameter names)."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                positions: torch.Tensor, cache: LayerKV | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)    # [B, Hkv, T, Dh]
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.write(positions, k, v)                                    # [B, Hkv, S, Dh]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             enable_gqa=self.n_heads != self.n_kv)  # [B, H, T, Dh]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                positions: torch.Tensor, cache: LayerKV | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, positions, cache)
        return x + self.mlp(self.post_attention_layernorm(x))
