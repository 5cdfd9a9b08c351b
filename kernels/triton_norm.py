"""Triton kernels: fused (residual add +) RMSNorm, and RoPE on q and k with the KV-cache write.

Imports triton at load time; use the dispatchers in :mod:`kernels.ops`, which fall back to
:mod:`kernels.reference` when this module cannot be imported. Both kernels are memory-bound: each
reads its inputs once and writes its outputs once (the residual sum and the cache write are fused so
they cost no extra pass).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Decided when the kernels are decorated (import time), exactly as triton.jit decides.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def warps_for(block: int) -> int:
    """Warps per program for a 1-D tile of ``block`` elements (about 8-16 elements per thread)."""
    return 1 if block <= 256 else 2 if block <= 512 else 4 if block <= 2048 else 8 if block <= 8192 else 16


# ---------------------------------------------------------------------------------------- RMSNorm
@triton.jit
def _rms_norm_kernel(X, R, W, OUT, H_OUT, stride_x, stride_r, stride_o, stride_h, D, eps,
                     HAS_RES: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program per row: the row stays in registers between the statistics and the scaling.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(R + row * stride_r + offs, mask=mask, other=0.0)
        # Round the sum to the activation dtype, as torch's `x + residual` does.
        h = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(H_OUT + row * stride_h + offs, h, mask=mask)
    else:
        h = x
    hf = h.to(tl.float32)
    mean_sq = tl.sum(hf * hf, axis=0) / D
    y = (hf * tl.rsqrt(mean_sq + eps)).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * stride_o + offs, (w * y).to(OUT.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] (+ residual) -> (out [..., D], h): see :func:`kernels.reference.add_rms_norm`."""
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    out2 = out.view(-1, d)
    if residual is not None:
        r2 = residual.reshape(-1, d)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        h2 = h.view(-1, d)
    else:
        r2, h, h2 = x2, x, x2
    if rows:
        block = triton.next_power_of_2(d)
        _rms_norm_kernel[(rows,)](x2, r2, weight.contiguous(), out2, h2, x2.stride(0), r2.stride(0),
                                  out2.stride(0), h2.stride(0), d, float(eps),
                                  HAS_RES=residual is not None, BLOCK_D=block, num_warps=warps_for(block))
    return out, h


# -------------------------------------------------------------------------------------------- RoPE
@triton.jit
def _rope_tile(X, sxb, sxh, sxt, OUT, sob, soh, sot, CACHE, scb, sch, scs, COS, SIN, stab,
               b, t, pos, n_heads, HALF, ROTATE: tl.constexpr, STORE_OUT: tl.constexpr,
               WRITE_CACHE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """All heads of one (slot, token): two [heads, Dh/2] tiles, one per half of head_dim."""
    hd = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (hd < n_heads) & (d < HALF)
    xp = X + b * sxb + hd * sxh + t * sxt + d
    x1 = tl.load(xp, mask=mask, other=0.0)
    x2 = tl.load(xp + HALF, mask=mask, other=0.0)
    if ROTATE:
        dt = X.dtype.element_ty
        dm = d < HALF
        # The tables are float32; cast them to the activation dtype first, as the runtime does.
        c1 = tl.load(COS + pos * stab + d, mask=dm, other=0.0).to(dt).to(tl.float32)
        c2 = tl.load(COS + pos * stab + HALF + d, mask=dm, other=0.0).to(dt).to(tl.float32)
        s1 = tl.load(SIN + pos * stab + d, mask=dm, other=0.0).to(dt).to(tl.float32)
        s2 = tl.load(SIN + pos * stab + HALF + d, mask=dm, other=0.0).to(dt).to(tl.float32)
        f1 = x1.to(tl.float32)
        f2 = x2.to(tl.float32)
        # rotate-half: [x1, x2] -> [x1*c1 - x2*s1, x2*c2 + x1*s2]
        y1 = (f1 * c1 - f2 * s1).to(dt)
        y2 = (f2 * c2 + f1 * s2).to(dt)
    else:
        y1 = x1
        y2 = x2
    if STORE_OUT:
        op = OUT + b * sob + hd * soh + t * sot + d
        tl.store(op, y1, mask=mask)
        tl.store(op + HALF, y2, mask=mask)
    if WRITE_CACHE:
        cp = CACHE + b * scb + hd * sch + pos * scs + d
        tl.store(cp, y1.to(CACHE.dtype.element_ty), mask=mask)
        tl.store(cp + HALF, y2.to(CACHE.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(Q, K, V, QO, KO, KC, VC, POS, COS, SIN,
                 sqb, sqh, sqt, sqob, sqoh, sqot, skb, skh, skt, skob, skoh, skot, svb, svh, svt,
                 scb, sch, scs, spb, spt, stab, T, HQ, HK, HALF,
                 WRITE_CACHE: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                 BLOCK_HALF: tl.constexpr):
    # Grid (B*T, 2 or 3): axis 1 picks q (rotate), k (rotate [+ cache]) or v (cache copy only).
    pid = tl.program_id(0)
    which = tl.program_id(1)
    b = (pid // T).to(tl.int64)
    t = (pid % T).to(tl.int64)
    pos = tl.load(POS + b * spb + t * spt).to(tl.int64)
    if which == 0:
        _rope_tile(Q, sqb, sqh, sqt, QO, sqob, sqoh, sqot, QO, 0, 0, 0, COS, SIN, stab, b, t, pos, HQ, HALF,
                   ROTATE=True, STORE_OUT=True, WRITE_CACHE=False, BLOCK_H=BLOCK_HQ, BLOCK_HALF=BLOCK_HALF)
    elif which == 1:
        _rope_tile(K, skb, skh, skt, KO, skob, skoh, skot, KC, scb, sch, scs, COS, SIN, stab, b, t, pos, HK,
                   HALF, ROTATE=True, STORE_OUT=True, WRITE_CACHE=WRITE_CACHE, BLOCK_H=BLOCK_HK,
                   BLOCK_HALF=BLOCK_HALF)
    else:
        _rope_tile(V, svb, svh, svt, VC, 0, 0, 0, VC, scb, sch, scs, COS, SIN, stab, b, t, pos, HK, HALF,
                   ROTATE=False, STORE_OUT=False, WRITE_CACHE=True, BLOCK_H=BLOCK_HK, BLOCK_HALF=BLOCK_HALF)


def rotary_qk_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, positions: torch.Tensor,
                    cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor | None = None,
                    v_cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`kernels.reference.rotary_qk_cache`; one launch for q, k and the cache write.

    q [B, H, T, Dh], k, v [B, Hkv, T, Dh] with any strides whose last one is 1 (the runtime's
    transposed projections qualify); outputs keep the inputs' layout.
    """
    bsz, hq, t, dh = q.shape
    hk = k.shape[1]
    half = dh // 2
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    write = k_cache is not None
    if write:
        assert v is not None and v_cache is not None and k_cache.stride() == v_cache.stride()
        cache_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2))
        vs = (v.stride(0), v.stride(1), v.stride(2))
    else:
        k_cache = v_cache = k_out
        v = k
        cache_strides = vs = (0, 0, 0)
    if bsz * t:
        _rope_kernel[(bsz * t, 3 if write else 2)](
            q, k, v, q_out, k_out, k_cache, v_cache, positions, cos, sin,
            q.stride(0), q.stride(1), q.stride(2), q_out.stride(0), q_out.stride(1), q_out.stride(2),
            k.stride(0), k.stride(1), k.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
            *vs, *cache_strides, positions.stride(0), positions.stride(1), cos.stride(0), t, hq, hk, half,
            WRITE_CACHE=write, BLOCK_HQ=triton.next_power_of_2(hq), BLOCK_HK=triton.next_power_of_2(hk),
            BLOCK_HALF=triton.next_power_of_2(half),
            num_warps=warps_for(triton.next_power_of_2(hq) * triton.next_power_of_2(half)))
    return q_out, k_out
