"""Plain-torch references: the definition of what every kernel in this package computes.

Each function is written for clarity, not speed, and matches the runtime's conventions
(``runtime/layers.py``, ``runtime/sampling.py``, ``voxcore/verify.py``, ``runtime/engine.py``,
``voxcore/streaming.py``); ``tests/kernels`` checks both that the kernels equal these references
and that these references equal the runtime's own code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------- RMSNorm
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., D] -> weight * x / rms(x). Statistics in float32 (half-precision sums overflow);
    the normalised value is rounded to x's dtype before the gain, as ``runtime.layers.RMSNorm`` does."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-norm block glue: ``h = x + residual`` (in x's dtype) -> ``(rms_norm(h), h)``."""
    h = x + residual
    return rms_norm(h, weight, eps), h


# ------------------------------------------------------------------------------------------- RoPE
def rotary(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (HF / Qwen2 layout, as ``runtime.layers.apply_rotary``).

    x [B, H, T, Dh]; positions [B, T] long; cos, sin [S, Dh] tables (float32) -> [B, H, T, Dh].
    The tables are cast to x's dtype first, as ``runtime.layers.Rotary`` does.
    """
    c = cos[positions].unsqueeze(1).to(x.dtype)           # [B, 1, T, Dh]
    s = sin[positions].unsqueeze(1).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * c + rotated * s


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor) -> None:
    """Store k, v [B, Hkv, T, Dh] into caches [B, Hkv, S, Dh] at positions [B, T] (``LayerKV.write``)."""
    b, h, t, d = k.shape
    idx = positions[:, None, :, None].expand(b, h, t, d)
    k_cache.scatter_(2, idx, k.to(k_cache.dtype))
    v_cache.scatter_(2, idx, v.to(v_cache.dtype))


def rotary_qk_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor | None = None,
                    v_cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q [B, H, T, Dh] and k [B, Hkv, T, Dh]; when caches are given, rotated k and v are
    written into them at ``positions``. Returns (q_rot, k_rot)."""
    q_rot, k_rot = rotary(q, positions, cos, sin), rotary(k, positions, cos, sin)
    if k_cache is not None:
        write_kv(k_cache, v_cache, positions, k_rot, v)
    return q_rot, k_rot


# ----------------------------------------------------------------------------- decode attention
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     positions: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention of T query tokens per slot over a preallocated KV cache, masked by position.

    q [B, H, T, Dh]; k_cache, v_cache [B, Hkv, S, Dh] (already holding this step's keys); positions
    [B, T]: query t of slot b sees cache entries ``0 .. positions[b, t]`` (inclusive), which is both
    the per-slot length and the causal mask inside the k+1 verify block. Head h uses kv head
    ``h // (H // Hkv)`` (GQA, as ``scaled_dot_product_attention(enable_gqa=True)``). Computed in
    float32 -> [B, H, T, Dh] in q's dtype.
    """
    b, h, t, d = q.shape
    g = h // k_cache.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    k = k_cache.float().repeat_interleave(g, dim=1)                       # [B, H, S, Dh]
    v = v_cache.float().repeat_interleave(g, dim=1)
    s = (q.float() @ k.transpose(-1, -2)) * scale                         # [B, H, T, S]
    key_pos = torch.arange(k.shape[2], device=q.device)
    visible = key_pos[None, None, None, :] <= positions[:, None, :, None]  # [B, 1, T, S]
    p = s.masked_fill(~visible, float("-inf")).softmax(-1)
    return (p @ v).to(q.dtype)


# ------------------------------------------------------------------------------------- sampling
def filtered_weights(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                     top_p: torch.Tensor) -> torch.Tensor:
    """Unnormalised sampling weights [R, V] after temperature, top-k and top-p (float32).

    Matches ``runtime.sampling`` (Temperature, TopK, TopP in that order) up to ties: top-k keeps
    every logit >= the k-th largest; top-p keeps token i when the top-k-renormalised mass of the
    tokens with a *strictly larger* logit is < top_p (ties are kept or dropped together).
    ``top_k <= 0`` and ``top_p >= 1`` switch a filter off. Greedy rows (temperature 0) are not
    handled here (see :func:`sample`).
    """
    x = logits.float()                                                   # [R, V]
    r, v = x.shape
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).float()
    w = torch.exp((x - x.max(-1, keepdim=True).values) / t[:, None])
    k = torch.where(top_k > 0, top_k.clamp(max=v), torch.full_like(top_k, v))
    kth = x.sort(dim=-1, descending=True).values.gather(-1, (k - 1)[:, None])
    w = torch.where(x >= kth, w, torch.zeros_like(w))
    # Mass strictly above each token's value: total minus the mass at or below it.
    asc, order = x.sort(dim=-1)
    cum = w.gather(-1, order).cumsum(-1)                                 # ascending order
    n_le = torch.searchsorted(asc, x, right=True)                        # how many values <= x_i
    mass_le = cum.gather(-1, (n_le - 1).clamp(min=0))
    above = cum[:, -1:] - mass_le
    keep_p = (above < top_p[:, None].float() * cum[:, -1:]) | (top_p[:, None] >= 1.0)
    return torch.where(keep_p, w, torch.zeros_like(w))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           uniform: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse CDF: logits [R, V]; per-row temperature, top_k, top_p and
    uniform [R] in [0, 1) -> tokens [R] long.

    Greedy rows (temperature 0) return the argmax (first index among ties). Other rows return the
    first index (in vocabulary order) where the cumulative filtered weight exceeds ``uniform * total``,
    so a fixed uniform tensor makes the draw reproducible and comparable across implementations.
    """
    w = filtered_weights(logits, temperature, top_k, top_p)
    cum = w.cumsum(-1)
    target = uniform.float()[:, None] * cum[:, -1:]
    tok = torch.searchsorted(cum, target, right=True)[:, 0]
    # Rounding can leave target == total: fall back to the last token with weight.
    last = (w > 0).long().cumsum(-1).argmax(-1)
    tok = torch.where(tok >= w.shape[-1], last, tok)
    return torch.where(temperature == 0, logits.float().argmax(-1), tok)


# -------------------------------------------------------------------------------- MTP acceptance
def mtp_accept(logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
               active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy verification of K drafts and the slot bookkeeping of ``DecodeEngine.step``, in place.

    logits [B, K+1, V] of the backbone on ``[pending, d_1 .. d_K]``; tokens [B, S] long with the
    pending token at ``tokens[b, n]`` and drafts at ``n+1 .. n+K`` (``n = lengths[b]``); active [B]
    bool (None = all). Keeps the longest prefix of drafts equal to the argmax, writes the next token
    at ``tokens[b, n + n_acc + 1]`` and sets ``lengths[b] = n + n_acc + 1`` for active slots
    (positions clamp at S - 1 as the engine's do). Returns (n_acc, next_token, num_new), each [B].
    """
    b, k1, _ = logits.shape
    cap = tokens.shape[1]
    if active is None:
        active = torch.ones(b, dtype=torch.bool, device=logits.device)
    n = lengths.clone()
    offs = torch.arange(k1, device=logits.device)
    drafts = tokens.gather(1, (n[:, None] + 1 + offs[:-1]).clamp(max=cap - 1))     # [B, K]
    target = logits.argmax(-1)                                                    # [B, K+1]
    n_acc = (drafts == target[:, :-1]).long().cumprod(1).sum(1)                   # [B]
    nxt = target.gather(1, n_acc[:, None])[:, 0]
    num_new = torch.where(active, n_acc + 1, torch.zeros_like(n_acc))
    bpos = (n + n_acc + 1).clamp(max=cap - 1)[:, None]
    tokens.scatter_(1, bpos, torch.where(active, nxt, tokens.gather(1, bpos)[:, 0])[:, None])
    lengths.copy_(n + num_new)
    return n_acc, nxt, num_new


# ------------------------------------------------------------------------- causal conv (vocoder)
def causal_conv1d(x: torch.Tensor, history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: int = 1, dilation: int = 1, slope: float | None = None,
                  residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of a streaming causal Conv1d (``voxcore.streaming.StreamingConv1d``), with the
    HiFi-GAN glue fused around it.

    x [B, Cin, T] (T a multiple of stride); history [B, Cin, H] with ``H = (k-1)*dilation + 1 - stride``
    the last H *activated* input frames; weight [Cout, Cin, k]. ``slope`` applies
    ``leaky_relu(x, slope)`` to the input first; ``residual`` [B, Cout, T // stride] is added to the
    output. Returns (out [B, Cout, T // stride], new history [B, Cin, H]).
    """
    xa = x if slope is None else F.leaky_relu(x, slope)
    full = torch.cat([history, xa], dim=-1)                              # [B, Cin, H + T]
    out = F.conv1d(full, weight, bias, stride=stride, dilation=dilation)
    if residual is not None:
        out = out + residual
    h = history.shape[-1]
    return out, full[..., full.shape[-1] - h:].clone()
