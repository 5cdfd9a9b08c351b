"""Triton kernel: one chunk of a streaming causal Conv1d with cached left state (vocoder/tokenizer).

See :func:`kernels.reference.causal_conv1d`. The reference concatenates [history | leaky_relu(x)]
into a new buffer, convolves, adds the residual in another pass and slices the new history. Here the
conv reads its taps straight from the history or from x (activating x on the fly), adds bias and
residual in registers, and a second tiny kernel writes the new history: x is read once per tap
window and no concatenated copy is made. The products are [Cout, Cin] x [Cin, T] tiles on ``tl.dot``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_norm import INTERPRETED  # noqa: F401 -- kernels.backend reads each kernel module's INTERPRETED


@triton.jit
def _conv_kernel(X, HIST, W, BIAS, RES, OUT, c_in, c_out, t_out, H, stride, dilation, slope,
                 sxb, sxc, sxt, shb, shc, sht, swo, swi, swk, srb, src, srt, sob, soc, sot,
                 KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
                 BLOCK_T: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    co_ok = co < c_out
    t_ok = t < t_out
    acc = tl.zeros([BLOCK_CO, BLOCK_T], tl.float32)
    for ci0 in range(0, c_in, BLOCK_CI):
        ci = ci0 + tl.arange(0, BLOCK_CI)
        ci_ok = ci < c_in
        for j in range(KSIZE):
            # Tap j of output t reads frame t*stride + j*dilation of [history | x].
            p = t * stride + j * dilation
            from_hist = p < H
            xh = tl.load(HIST + b * shb + ci[:, None] * shc + p[None, :] * sht,
                         mask=ci_ok[:, None] & (t_ok & from_hist)[None, :], other=0.0)
            xx = tl.load(X + b * sxb + ci[:, None] * sxc + (p - H)[None, :] * sxt,
                         mask=ci_ok[:, None] & (t_ok & (p >= H))[None, :], other=0.0)
            if ACT:
                xx = tl.where(xx >= 0, xx, xx * slope).to(X.dtype.element_ty)
            xin = tl.where(from_hist[None, :], xh.to(X.dtype.element_ty), xx)
            w = tl.load(W + co[:, None] * swo + ci[None, :] * swi + j * swk,
                        mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
            acc += tl.dot(w, xin.to(w.dtype), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + co, mask=co_ok, other=0.0).to(tl.float32)[:, None]
    out_ok = co_ok[:, None] & t_ok[None, :]
    if HAS_RES:
        # Round the conv to the output dtype first, as torch's separate `out + residual` does.
        res = tl.load(RES + b * srb + co[:, None] * src + t[None, :] * srt, mask=out_ok, other=0.0)
        acc = acc.to(OUT.dtype.element_ty).to(tl.float32) + res.to(tl.float32)
    tl.store(OUT + b * sob + co[:, None] * soc + t[None, :] * sot, acc.to(OUT.dtype.element_ty), mask=out_ok)


@triton.jit
def _history_kernel(X, HIST, NEW, c_in, t_in, H, slope, sxb, sxc, sxt, shb, shc, sht, snb, snc, snt,
                    ACT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    # New history = the last H frames of [history | act(x)]: frame i comes from t_in + i.
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < c_in
    for i0 in range(0, H, BLOCK_H):
        i = i0 + tl.arange(0, BLOCK_H)
        src = t_in + i
        i_ok = i < H
        from_hist = src < H
        xh = tl.load(HIST + b * shb + c[:, None] * shc + src[None, :] * sht,
                     mask=c_ok[:, None] & (i_ok & from_hist)[None, :], other=0.0)
        xx = tl.load(X + b * sxb + c[:, None] * sxc + (src - H)[None, :] * sxt,
                     mask=c_ok[:, None] & (i_ok & (src >= H))[None, :], other=0.0)
        if ACT:
            xx = tl.where(xx >= 0, xx, xx * slope).to(X.dtype.element_ty)
        val = tl.where(from_hist[None, :], xh.to(X.dtype.element_ty), xx)
        tl.store(NEW + b * snb + c[:, None] * snc + i[None, :] * snt, val.to(NEW.dtype.element_ty),
                 mask=c_ok[:, None] & i_ok[None, :])


def conv_tiles(c_in: int, c_out: int, t_out: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_CO, BLOCK_CI, BLOCK_T, warps, stages), from a sweep on an H100 (bench/RESULTS.md): a
    streaming chunk (tens of frames) wants narrow output-channel tiles so enough programs run; a long
    offline pass (compute-bound: 2*B*Cout*Cin*k*T flops) wants long time tiles and a deeper pipeline."""
    if t_out >= 512 and c_out >= 64 and c_in >= 64:
        return 64, 64, 256, 8, 3
    return (max(16, min(32, triton.next_power_of_2(c_out))), max(16, min(64, triton.next_power_of_2(c_in))),
            max(16, min(64, triton.next_power_of_2(t_out))), 4, 2)


def causal_conv1d(x: torch.Tensor, history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  stride: int = 1, dilation: int = 1, slope: float | None = None,
                  residual: torch.Tensor | None = None, tiles: tuple[int, int, int, int, int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, Cin, T]; history [B, Cin, H]; weight [Cout, Cin, k] -> (out [B, Cout, T // stride], new history).

    ``tiles`` = (BLOCK_CO, BLOCK_CI, BLOCK_T, warps, stages) overrides :func:`conv_tiles` (for tuning)."""
    bsz, c_in, t_in = x.shape
    c_out, _, ksize = weight.shape
    h = history.shape[-1]
    t_out = t_in // stride
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty((bsz, c_out, t_out), dtype=out_dtype, device=x.device)
    new_hist = torch.empty_like(history)
    act = slope is not None
    slope = float(slope) if act else 0.0
    precision = "ieee" if weight.dtype == torch.float32 else "tf32"
    if bsz and t_out:
        block_co, block_ci, block_t, warps, stages = tiles or conv_tiles(c_in, c_out, t_out)
        res = residual if residual is not None else out
        _conv_kernel[(bsz, triton.cdiv(c_out, block_co), triton.cdiv(t_out, block_t))](
            x, history, weight, bias if bias is not None else weight, res, out,
            c_in, c_out, t_out, h, stride, dilation, slope,
            *x.stride(), *history.stride(), *weight.stride(), *res.stride(), *out.stride(),
            KSIZE=ksize, HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT=act,
            PRECISION=precision, BLOCK_CO=block_co, BLOCK_CI=block_ci, BLOCK_T=block_t, num_warps=warps,
            num_stages=stages)
    if bsz and h:
        block_c = max(16, min(64, triton.next_power_of_2(c_in)))
        _history_kernel[(bsz, triton.cdiv(c_in, block_c))](
            x, history, new_hist, c_in, t_in, h, slope, *x.stride(), *history.stride(), *new_hist.stride(),
            ACT=act, BLOCK_C=block_c, BLOCK_H=min(64, triton.next_power_of_2(h)), num_warps=2)
    return out, new_hist
