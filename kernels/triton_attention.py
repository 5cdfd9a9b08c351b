"""Triton kernel: decode / MTP-verify attention over a preallocated KV cache (split-KV, GQA).

Layout is the runtime's (``runtime.state.KVCache.layer``): caches ``[B, Hkv, S, Dh]``, queries
``[B, H, T, Dh]`` for T = k+1 tokens per slot at ``positions [B, T]``; query t sees cache entries
``0 .. positions[b, t]``. See :func:`kernels.reference.decode_attention`.

Why this shape of kernel: at decode the cost is reading K and V. One program owns one (slot, kv
head) and *all* G*T query rows that share it (G query heads per kv head times T verify tokens), so
each key block is loaded once for G*T rows and the two products are small matrix multiplies. Keys
are read only up to the slot's largest query position, not the whole capacity (the runtime's SDPA
call with a position mask reads all S). With few (slot, kv head) pairs the GPU would idle, so the key
range is split over programs (flash-decoding) and a second small kernel merges the partial softmaxes.
Which splits are empty depends on lengths that live on the device; they exit at once, so the grid
depends only on shapes and nothing syncs with the host (CUDA-graph safe).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import triton
import triton.language as tl

from kernels.triton_norm import INTERPRETED  # noqa: F401 -- kernels.backend reads each kernel module's INTERPRETED

LOG2E = 1.4426950408889634  # host side only (folded into qk_scale)


@triton.jit
def _attn_partial_kernel(Q, K, V, POS, OUT, ACC, ML,
                         sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, spb, spt, sob, soh, sot,
                         sab, sah, sas, smb, smh, sms,
                         T, G, D, keys_per_split, qk_scale,
                         SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    rows = tl.arange(0, BLOCK_M)
    g = rows // T                    # query head within the group
    t = rows % T                     # verify token
    row_ok = rows < G * T
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    qh = kvh * G + g
    q = tl.load(Q + b * sqb + qh[:, None] * sqh + t[:, None] * sqt + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    qpos = tl.load(POS + b * spb + t * spt, mask=row_ok, other=-1)
    start = split.to(tl.int64) * keys_per_split
    end = tl.minimum(start + keys_per_split, tl.max(qpos, axis=0) + 1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        kpos = n0 + tl.arange(0, BLOCK_N)
        kv_ok = (kpos < end)[:, None] & d_ok[None, :]
        k = tl.load(K + b * skb + kvh * skh + kpos[:, None] * sks + d[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale       # log2 domain
        s = tl.where((kpos[None, :] <= qpos[:, None]) & (kpos < end)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        v = tl.load(V + b * svb + kvh * svh + kpos[:, None] * svs + d[None, :], mask=kv_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    if SPLIT:
        # Unnormalised partials; an empty split writes only (m=-inf, l=0) and the merge skips it.
        tl.store(ML + b * smb + kvh * smh + split * sms + rows, m_i, mask=row_ok)
        tl.store(ML + b * smb + kvh * smh + split * sms + BLOCK_M + rows, l_i, mask=row_ok)
        tl.store(ACC + b * sab + kvh * sah + split * sas + rows[:, None] * BLOCK_D + d[None, :], acc,
                 mask=row_ok[:, None] & (start < end))
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(OUT + b * sob + qh[:, None] * soh + t[:, None] * sot + d[None, :],
                 out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _attn_merge_kernel(ACC, ML, OUT, sab, sah, sas, smb, smh, sms, sob, soh, sot, T, G, D, n_splits,
                       BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < G * T
    d = tl.arange(0, BLOCK_D)
    m_run = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_run = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in range(0, n_splits):
        ml = ML + b * smb + kvh * smh + s * sms
        m_s = tl.load(ml + rows, mask=row_ok, other=float("-inf"))
        l_s = tl.load(ml + BLOCK_M + rows, mask=row_ok, other=0.0)
        has = l_s > 0
        a_s = tl.load(ACC + b * sab + kvh * sah + s * sas + rows[:, None] * BLOCK_D + d[None, :],
                      mask=has[:, None], other=0.0)
        m_new = tl.maximum(m_run, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        c_run = tl.exp2(m_run - m_safe)
        c_s = tl.where(has, tl.exp2(m_s - m_safe), 0.0)
        acc = acc * c_run[:, None] + a_s * c_s[:, None]
        l_run = l_run * c_run + l_s * c_s
        m_run = m_new
    out = acc / tl.where(l_run > 0, l_run, 1.0)[:, None]
    qh = kvh * G + rows // T
    t = rows % T
    tl.store(OUT + b * sob + qh[:, None] * soh + t[:, None] * sot + d[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & (d < D)[None, :])


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def pick_splits(device: torch.device, programs: int, capacity: int, block_n: int,
                min_keys: int = 256) -> int:
    """Key-range splits so that about two programs run per SM, each over >= ``min_keys`` keys
    (fewer keys per split would make the partials' traffic comparable to the keys' own)."""
    if device.type != "cuda":
        return 1
    want = math.ceil(2 * _sm_count(device.index or 0) / max(programs, 1))
    return max(1, min(want, math.ceil(capacity / max(min_keys, block_n))))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                     scale: float | None = None, num_splits: int | None = None,
                     block_n: int | None = None) -> torch.Tensor:
    """q [B, H, T, Dh]; caches [B, Hkv, S, Dh]; positions [B, T] -> [B, H, T, Dh] (a transposed view
    of a [B, T, H, Dh] buffer, so the runtime's ``out.transpose(1, 2).reshape(B, T, H*Dh)`` is free)."""
    bsz, h, t, dh = q.shape
    hkv, cap = k_cache.shape[1], k_cache.shape[2]
    g = h // hkv
    out = torch.empty((bsz, t, h, dh), dtype=q.dtype, device=q.device).transpose(1, 2)
    if bsz * t == 0:
        return out
    block_m = max(16, triton.next_power_of_2(g * t))
    block_d = max(16, triton.next_power_of_2(dh))
    if block_n is None:
        block_n = 64  # an H100 sweep (bench/RESULTS.md): 64 beat 32 at Dh 128; 128 spills at Dh 64
    if num_splits is None:
        num_splits = pick_splits(q.device, bsz * hkv, cap, block_n)
    keys_per_split = triton.cdiv(triton.cdiv(cap, num_splits), block_n) * block_n
    num_splits = triton.cdiv(cap, keys_per_split)
    qk_scale = (1.0 / math.sqrt(dh) if scale is None else scale) * LOG2E
    # float32 operands: exact products (tf32 would cost ~1e-3); half types use the tensor cores.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    split = num_splits > 1
    if split:
        acc = torch.empty((bsz, hkv, num_splits, block_m, block_d), dtype=torch.float32, device=q.device)
        ml = torch.empty((bsz, hkv, num_splits, 2, block_m), dtype=torch.float32, device=q.device)
        acc_s = (acc.stride(0), acc.stride(1), acc.stride(2))
        ml_s = (ml.stride(0), ml.stride(1), ml.stride(2))
    else:
        acc = ml = out
        acc_s = ml_s = (0, 0, 0)
    warps = 4 if block_m * block_d <= 64 * 64 else 8
    _attn_partial_kernel[(bsz, hkv, num_splits)](
        q, k_cache, v_cache, positions, out, acc, ml,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), positions.stride(0), positions.stride(1),
        out.stride(0), out.stride(1), out.stride(2), *acc_s, *ml_s,
        t, g, dh, keys_per_split, qk_scale,
        SPLIT=split, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=precision,
        num_warps=warps, num_stages=2)
    if split:
        _attn_merge_kernel[(bsz, hkv)](acc, ml, out, *acc_s, *ml_s, out.stride(0), out.stride(1), out.stride(2),
                                       t, g, dh, num_splits, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return out
