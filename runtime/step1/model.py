"""Step1ForCausalLM, the LLM of Step-Audio-TTS-3B and Step-Audio-EditX (SPEC step_audio_v1 §6).

A pre-norm decoder with grouped KV heads and **sqrt-ALiBi** as its only position signal (no RoPE, no
positional table, no biases anywhere)::

    h = embed_tokens(ids)
    h += o_proj(Attn(RMSNorm1(h)))          scores = q.k / sqrt(head_dim) - m_h * sqrt(i - j),  j <= i
    h += down(silu(gate(x)) * up(x))        x = RMSNorm2(h)
    hidden = norm(h);  logits = lm_head(hidden)

Parameter names are the official ones (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj`` ...,
``model.norm``, ``lm_head``), so the official safetensors load without renaming.

The interface is :class:`runtime.model.AudioLM`'s, so :class:`runtime.engine.DecodeEngine` drives it:
``forward(tokens [B, T], positions [B, T], cache) -> hidden [B, T, D]`` and ``logits(hidden)``. With a
:class:`runtime.state.KVCache` the new keys/values are written at ``positions`` and each query attends to
every cache position ``<=`` its own, with the bias taken from the absolute positions (SPEC §6: "i and j are
absolute positions in the whole sequence, cache included"), so cached and uncached decoding agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from runtime.layers import MLP, LayerKV
from runtime.state import KVCache
from runtime.step1.config import Step1Config


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The per-head slopes m_h [H], float32, exactly as the reference computes them (SPEC §6).

    n = 2^floor(log2 H); m_h = (2^(-8/n))^(h+1) for h < n, then (2^(-4/n))^k for k = 1, 3, 5, ... for the
    remaining H - n heads. The power is taken in float32 of the float32-rounded base: that is what the
    golden ``alibi_slopes_48`` holds (its slope 32 is 0.0039062519, not 2^-8).
    """
    n = 2 ** math.floor(math.log2(n_heads))
    base = torch.tensor(2.0 ** (-8.0 / n), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, n + 1, dtype=torch.float32))
    if n_heads > n:
        extra_base = torch.tensor(2.0 ** (-4.0 / n), dtype=torch.float32)
        odd = torch.arange(1, 2 * (n_heads - n), 2, dtype=torch.float32)
        slopes = torch.cat([slopes, torch.pow(extra_base, odd)])
    return slopes


def sqrt_alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias -m_h * sqrt(i - j) for key j <= query i, -inf above the diagonal.

    slopes [H]; q_pos [B, T]; k_pos [B, S] or [S] (absolute positions) -> [B, H, T, S] in ``dtype``.
    Computed in float32 and cast once: scaled_dot_product_attention wants the bias in the query dtype.
    """
    if k_pos.dim() == 1:
        k_pos = k_pos.unsqueeze(0)
    dist = (q_pos[:, None, :, None] - k_pos[:, None, None, :]).to(torch.float32)   # [B, 1, T, S]
    bias = -(slopes.to(torch.float32)[None, :, None, None] * dist.clamp(min=0).sqrt())
    return bias.masked_fill(dist < 0, float("-inf")).to(dtype)


class Step1RMSNorm(nn.Module):
    """y = x * rsqrt(mean(x^2) + eps) * w, the mean in float32 and the rsqrt cast back to x's dtype
    before the multiply (SPEC §6: the reference's order, which matters in bf16)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype)
        return x * scale * self.weight


class Step1Attention(nn.Module):
    """Grouped-query attention: query head h reads KV group h // (heads / groups); bias-free projections."""

    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, positions: torch.Tensor,
                cache: LayerKV | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)    # [B, Hkv, T, Dh]
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.write(positions, k, v)                                    # [B, Hkv, S, Dh]
        # enable_gqa repeats each KV group over its heads/groups consecutive query heads (repeat-interleave),
        # the grouping of SPEC §6; the default scale is 1/sqrt(head_dim).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=self.n_heads != self.n_kv)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class Step1DecoderLayer(nn.Module):
    """Pre-norm block: h + attn(norm1(h)), then + SwiGLU(norm2(h))."""

    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.input_layernorm = Step1RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Step1Attention(cfg)
        self.post_attention_layernorm = Step1RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)   # gate_proj / up_proj / down_proj, no biases: the official names

    def forward(self, x: torch.Tensor, bias: torch.Tensor, positions: torch.Tensor,
                cache: LayerKV | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), bias, positions, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Step1Model(nn.Module):
    """Embedding, the decoder layers and the final norm (the official ``model.`` prefix)."""

    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Step1DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = Step1RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Step1ForCausalLM(nn.Module):
    """The Step1 LM. ``forward(tokens, positions, cache) -> hidden`` (after ``model.norm``), ``logits(hidden)``.

    With ``tie_word_embeddings`` there is no ``lm_head`` parameter (the logits use the embedding table),
    so the module's tensors are exactly the ones a tied checkpoint stores.
    """

    def __init__(self, cfg: Step1Config) -> None:
        super().__init__()
        self.config = cfg
        self.model = Step1Model(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.derive_buffers()

    def derive_buffers(self) -> None:
        """The ALiBi slopes from the head count (again after a meta build; see voxcore.strict_load).
        Kept in float32 whatever the weights' dtype: the bias is formed in float32 (sqrt_alibi_bias)."""
        self.register_buffer("alibi_slopes", alibi_slopes(self.config.num_attention_heads), persistent=False)

    def _apply(self, fn, recurse=True):
        # .to(bfloat16) must not round the slopes: they stay float32 (only their device follows).
        slopes = self.alibi_slopes
        out = super()._apply(fn, recurse)
        if slopes.device.type != "meta":
            self._buffers["alibi_slopes"] = slopes.to(device=self.alibi_slopes.device, dtype=torch.float32)
        return out

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        b, t = tokens.shape
        if positions is None:
            positions = torch.arange(t, device=tokens.device).expand(b, t)
        x = self.model.embed_tokens(tokens)                                        # [B, T, D]
        k_pos = positions if cache is None else torch.arange(cache.capacity, device=tokens.device)
        bias = sqrt_alibi_bias(self.alibi_slopes, positions, k_pos, x.dtype)      # [B, H, T, S]
        for i, layer in enumerate(self.model.layers):
            x = layer(x, bias, positions, None if cache is None else cache.layer(i))
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> logits [..., V]."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)
