"""Triton kernels: fused temperature / top-k / top-p sampling, and greedy MTP acceptance.

Sampling (:func:`kernels.reference.sample`) runs one program per row and never sorts: top-k and
top-p are both thresholds on the logit value, found by bisection over an order-preserving integer
key of the float (exact: the search ends on a value present in the row). Each bisection step is one
pass over the row counting (top-k) or summing weights (top-p) above the pivot: about 16 passes for
bf16/fp16 logits, 32 for float32. The draw is an inverse CDF in vocabulary order with one uniform per
row, so a given uniform picks the same token as the reference. Rows with temperature 0 take the
argmax only; rows with the filters off skip their searches.

MTP acceptance (:func:`kernels.reference.mtp_accept`): a split argmax over the vocabulary for the
K+1 verified positions, then one program per slot compares drafts, picks the next token and moves
the slot's length, all on the device.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_norm import INTERPRETED  # noqa: F401 -- kernels.backend reads each kernel module's INTERPRETED

# Used inside a kernel: compiled Triton only reads globals declared constexpr.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _key(x, SHIFT: tl.constexpr):
    """float32 -> int64 whose order is the float order (``SHIFT`` drops always-zero low bits)."""
    i = x.to(tl.int32, bitcast=True)
    i = tl.where(i >= 0, i, i ^ 0x7FFFFFFF)
    return (i >> SHIFT).to(tl.int64)


@triton.jit
def _sample_kernel(L, TEMP, TOPK, TOPP, U, OUT, stride_l, V,
                   SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = L + row * stride_l
    offs = tl.arange(0, BLOCK)
    temp = tl.load(TEMP + row).to(tl.float32)
    top_k = tl.load(TOPK + row).to(tl.int64)
    top_p = tl.load(TOPP + row).to(tl.float32)
    # Pass 1: max (first argmax) and min of the row.
    m = float("-inf")
    mn = float("inf")
    best = 0
    for v0 in range(0, V, BLOCK):
        idx = v0 + offs
        x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        bm = tl.max(x, axis=0)
        bi = tl.min(tl.where(x == bm, idx, V), axis=0)
        best = tl.where(bm > m, bi, best)
        m = tl.maximum(m, bm)
        mn = tl.minimum(mn, tl.min(tl.where(idx < V, x, float("inf")), axis=0))
    token = best
    if temp > 0:
        c = LOG2E / temp                        # weights exp((x - m) / T) = exp2((x - m) * c)
        key_max = _key(m, SHIFT)
        thr = _key(mn, SHIFT)                   # keep keys >= thr (all, until a filter says otherwise)
        if (top_k > 0) & (top_k < V):
            # Largest key t with count(key >= t) >= k: invariant count(>= lo) >= k > count(>= hi).
            lo = thr
            hi = key_max + 1
            while hi - lo > 1:
                mid = lo + (hi - lo) // 2
                cnt = tl.zeros([], tl.int64)
                for v0 in range(0, V, BLOCK):
                    idx = v0 + offs
                    x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
                    cnt += tl.sum(((_key(x, SHIFT) >= mid) & (idx < V)).to(tl.int64), axis=0)
                if cnt >= top_k:
                    lo = mid
                else:
                    hi = mid
            thr = lo
        if top_p < 1.0:
            # Smallest key t whose strictly-greater mass (within top-k) is < top_p * Z_k.
            z = 0.0
            for v0 in range(0, V, BLOCK):
                idx = v0 + offs
                x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
                keep = (_key(x, SHIFT) >= thr) & (idx < V)
                z += tl.sum(tl.where(keep, tl.exp2((x - m) * c), 0.0), axis=0)
            lo = thr - 1                        # mass above lo is z >= top_p * z: predicate false
            hi = key_max                        # mass above the max is 0: predicate true
            while hi - lo > 1:
                mid = lo + (hi - lo) // 2
                above = 0.0
                for v0 in range(0, V, BLOCK):
                    idx = v0 + offs
                    x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
                    k = _key(x, SHIFT)
                    sel = (k > mid) & (k >= thr) & (idx < V)
                    above += tl.sum(tl.where(sel, tl.exp2((x - m) * c), 0.0), axis=0)
                if above < top_p * z:
                    hi = mid
                else:
                    lo = mid
            thr = hi
        # Inverse CDF in vocabulary order over the kept weights.
        total = 0.0
        for v0 in range(0, V, BLOCK):
            idx = v0 + offs
            x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
            keep = (_key(x, SHIFT) >= thr) & (idx < V)
            total += tl.sum(tl.where(keep, tl.exp2((x - m) * c), 0.0), axis=0)
        target = tl.load(U + row).to(tl.float32) * total
        carry = 0.0
        found = V
        last = 0
        for v0 in range(0, V, BLOCK):
            idx = v0 + offs
            x = tl.load(base + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
            keep = (_key(x, SHIFT) >= thr) & (idx < V)
            w = tl.where(keep, tl.exp2((x - m) * c), 0.0)
            cum = tl.cumsum(w, axis=0) + carry
            found = tl.minimum(found, tl.min(tl.where((cum > target) & (w > 0), idx, V), axis=0))
            last = tl.maximum(last, tl.max(tl.where(w > 0, idx, -1), axis=0))
            carry += tl.sum(w, axis=0)
        token = tl.where(found < V, found, last)
    tl.store(OUT + row, token.to(tl.int64))


_KEY_SHIFT = {torch.float32: 0, torch.bfloat16: 16, torch.float16: 13}


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           uniform: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """logits [R, V] (last dim contiguous); per-row params and uniform [R] -> tokens [R] long."""
    r, v = logits.shape
    out = torch.empty(r, dtype=torch.long, device=logits.device)
    if r:
        block = block or min(2048, triton.next_power_of_2(v))
        _sample_kernel[(r,)](logits, temperature.contiguous(), top_k.contiguous(), top_p.contiguous(),
                             uniform.contiguous(), out, logits.stride(0), v,
                             SHIFT=_KEY_SHIFT[logits.dtype], BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return out


# ------------------------------------------------------------------------------- MTP acceptance
@triton.jit
def _argmax_partial_kernel(L, PV, PI, stride_l, V, chunk, n_chunks, BLOCK: tl.constexpr):
    # Grid (rows, chunks): first argmax of logits[row, chunk range].
    row = tl.program_id(0).to(tl.int64)
    ch = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    start = ch * chunk
    stop = tl.minimum(start + chunk, V)
    m = float("-inf")
    best = stop
    for v0 in range(start, stop, BLOCK):
        idx = v0 + offs
        x = tl.load(L + row * stride_l + idx, mask=idx < stop, other=float("-inf")).to(tl.float32)
        bm = tl.max(x, axis=0)
        bi = tl.min(tl.where(x == bm, idx, stop), axis=0)
        best = tl.where(bm > m, bi, best)
        m = tl.maximum(m, bm)
    tl.store(PV + row * n_chunks + ch, m)
    tl.store(PI + row * n_chunks + ch, best.to(tl.int64))


@triton.jit
def _accept_kernel(PV, PI, TOKENS, LENGTHS, ACTIVE, NACC, NEXT, NUM_NEW, stride_tok, K1, cap, n_chunks,
                   BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    # One program per slot: finish the argmax of its K+1 rows, accept, write the next token, move n.
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_K)
    c = tl.arange(0, BLOCK_C)
    ok = (i[:, None] < K1) & (c[None, :] < n_chunks)
    p = (b * K1 + i[:, None]) * n_chunks + c[None, :]
    pv = tl.load(PV + p, mask=ok, other=float("-inf"))
    pi = tl.load(PI + p, mask=ok, other=0)
    rmax = tl.max(pv, axis=1)
    # Chunks are in vocabulary order, so the smallest index among equal maxima is the first argmax.
    target = tl.min(tl.where(ok & (pv == rmax[:, None]), pi, 2**62), axis=1)       # [BLOCK_K]
    n = tl.load(LENGTHS + b)
    dpos = tl.minimum(n + 1 + i, cap - 1)
    drafts = tl.load(TOKENS + b * stride_tok + dpos, mask=i < K1 - 1, other=-1)
    mismatch = (drafts != target) & (i < K1 - 1)
    n_acc = tl.min(tl.where(mismatch, i, K1 - 1), axis=0)
    nxt = tl.sum(tl.where(i == n_acc, target, 0), axis=0)
    active = tl.load(ACTIVE + b) != 0
    num_new = tl.where(active, n_acc + 1, 0)
    bpos = tl.minimum(n + n_acc + 1, cap - 1)
    tl.store(TOKENS + b * stride_tok + bpos, nxt, mask=active)
    tl.store(LENGTHS + b, n + num_new)
    tl.store(NACC + b, n_acc.to(tl.int64))
    tl.store(NEXT + b, nxt)
    tl.store(NUM_NEW + b, num_new.to(tl.int64))


def mtp_accept(logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, active: torch.Tensor,
               chunk: int | None = None, block: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See :func:`kernels.reference.mtp_accept`. logits [B, K+1, V] (last dim contiguous); tokens
    [B, S] and lengths [B] long (updated in place); active [B] bool."""
    bsz, k1, v = logits.shape
    rows = logits.reshape(bsz * k1, v)
    block = block or min(1024, triton.next_power_of_2(v))
    chunk = chunk or max(block, triton.cdiv(triton.cdiv(v, 32), block) * block)  # <= 32 chunks a row
    n_chunks = triton.cdiv(v, chunk)
    dev = logits.device
    pv = torch.empty(bsz * k1 * n_chunks, dtype=torch.float32, device=dev)
    pi = torch.empty(bsz * k1 * n_chunks, dtype=torch.long, device=dev)
    n_acc, nxt, num_new = (torch.empty(bsz, dtype=torch.long, device=dev) for _ in range(3))
    if bsz:
        _argmax_partial_kernel[(bsz * k1, n_chunks)](rows, pv, pi, rows.stride(0), v, chunk, n_chunks,
                                                     BLOCK=block, num_warps=4)
        _accept_kernel[(bsz,)](pv, pi, tokens, lengths, active.to(torch.int8), n_acc, nxt, num_new,
                               tokens.stride(0), k1, tokens.shape[1], n_chunks,
                               BLOCK_K=triton.next_power_of_2(k1), BLOCK_C=triton.next_power_of_2(n_chunks),
                               num_warps=1)
    return n_acc, nxt, num_new
