"""Dispatchers: validate arguments, then run the Triton kernel or the plain-torch reference.

Every op takes ``backend=None`` (automatic: Triton on CUDA, the reference elsewhere, with a one-time
:class:`kernels.backend.KernelFallbackWarning`), ``"triton"`` or ``"torch"``; see
:mod:`kernels.backend`. The semantics of each op are those of the same-named function in
:mod:`kernels.reference`.
"""
from __future__ import annotations

import torch

from kernels import reference
from kernels.backend import use_triton


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, backend: str | None = None) -> torch.Tensor:
    """x [..., D], weight [D] -> weight * x / rms(x)."""
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight {tuple(weight.shape)} does not match the last dim of x {tuple(x.shape)}")
    mod = use_triton("rms_norm", "triton_norm", x, backend)
    return reference.rms_norm(x, weight, eps) if mod is None else mod.rms_norm(x, weight, eps)[0]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, *,
                 backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the add that ends a sub-block fused with the next norm."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} must match x "
                         f"{tuple(x.shape)} {x.dtype}")
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"weight {tuple(weight.shape)} does not match the last dim of x {tuple(x.shape)}")
    mod = use_triton("add_rms_norm", "triton_norm", x, backend)
    if mod is None:
        return reference.add_rms_norm(x, residual, weight, eps)
    return mod.rms_norm(x, weight, eps, residual)


def rotary_qk_cache(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, v: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
                    v_cache: torch.Tensor | None = None, *, backend: str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE (rotate-half) on q [B, H, T, Dh] and k [B, Hkv, T, Dh] at positions [B, T] with tables
    cos, sin [S, Dh]; with ``k_cache, v_cache`` [B, Hkv, S, Dh] also stores rotated k and v there.
    Returns (q_rot, k_rot)."""
    b, h, t, dh = q.shape
    if k.dim() != 4 or k.shape[0] != b or k.shape[2:] != (t, dh) or h % k.shape[1]:
        raise ValueError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)} (GQA needs H % Hkv == 0)")
    if dh % 2:
        raise ValueError(f"head_dim {dh} must be even for rotate-half RoPE")
    if positions.shape != (b, t):
        raise ValueError(f"positions {tuple(positions.shape)} must be [B, T] = {(b, t)}")
    if (k_cache is None) != (v_cache is None) or (k_cache is not None and v is None):
        raise ValueError("pass v, k_cache and v_cache together (or none of them)")
    if k_cache is not None and (k_cache.shape != v_cache.shape or k_cache.shape[:2] != k.shape[:2]
                                or k_cache.shape[3] != dh):
        raise ValueError(f"caches {tuple(k_cache.shape)} must be [B, Hkv, S, Dh] for k {tuple(k.shape)}")
    mod = use_triton("rotary_qk_cache", "triton_norm", q, backend)
    if mod is None:
        return reference.rotary_qk_cache(q, k, v, positions, cos, sin, k_cache, v_cache)
    if k_cache is not None and (k_cache.stride(-1) != 1 or v_cache.stride() != k_cache.stride()):
        raise ValueError("the Triton cache write needs k_cache and v_cache with equal strides, last one 1")
    q, k = _rows_contiguous(q), _rows_contiguous(k)
    v = None if v is None else _rows_contiguous(v)
    return mod.rotary_qk_cache(q, k, v, positions, cos, sin, k_cache, v_cache)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                     scale: float | None = None, *, backend: str | None = None,
                     num_splits: int | None = None) -> torch.Tensor:
    """q [B, H, T, Dh] over caches [B, Hkv, S, Dh]; query t of slot b sees positions
    ``0 .. positions[b, t]`` -> [B, H, T, Dh]. ``num_splits`` overrides the key-range split (Triton)."""
    b, h, t, dh = q.shape
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[0] != b or k_cache.shape[3] != dh:
        raise ValueError(f"caches {tuple(k_cache.shape)}/{tuple(v_cache.shape)} must be [B, Hkv, S, Dh] "
                         f"for q {tuple(q.shape)}")
    if h % k_cache.shape[1]:
        raise ValueError(f"{h} query heads are not a multiple of {k_cache.shape[1]} kv heads")
    if positions.shape != (b, t):
        raise ValueError(f"positions {tuple(positions.shape)} must be [B, T] = {(b, t)}")
    mod = use_triton("decode_attention", "triton_attention", q, backend)
    if mod is None:
        return reference.decode_attention(q, k_cache, v_cache, positions, scale)
    return mod.decode_attention(_rows_contiguous(q), _rows_contiguous(k_cache), _rows_contiguous(v_cache),
                                positions, scale, num_splits=num_splits)


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           uniform: torch.Tensor | None = None, generator: torch.Generator | None = None, *,
           backend: str | None = None) -> torch.Tensor:
    """Fused temperature / top-k / top-p sampling: logits [B, V] or [B, T, V] with per-slot
    temperature, top_k, top_p [B] (``runtime.sampling.Sampler``'s tensors) -> tokens [B] or [B, T].

    ``uniform`` (same shape as the result, values in [0, 1)) makes the draw reproducible; without it
    one is drawn from ``generator``. Temperature 0 rows are greedy.
    """
    lead, v = logits.shape[:-1], logits.shape[-1]
    b = lead[0]
    for name, p in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        if p.shape != (b,):
            raise ValueError(f"{name} {tuple(p.shape)} must be [B] = ({b},)")
    if uniform is None:
        uniform = torch.rand(lead, generator=generator, device=logits.device)
    elif uniform.shape != lead:
        raise ValueError(f"uniform {tuple(uniform.shape)} must be {tuple(lead)}")
    per_row = lead.numel() // max(b, 1)
    rows = _rows_contiguous(logits.reshape(-1, v))
    temp, k, p = (x.repeat_interleave(per_row) for x in (temperature.float(), top_k.long(), top_p.float()))
    u = uniform.reshape(-1).float()
    mod = use_triton("sample", "triton_sampling", logits, backend)
    tok = reference.sample(rows, temp, k, p, u) if mod is None else mod.sample(rows, temp, k, p, u)
    return tok.reshape(lead)


def mtp_accept(logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
               active: torch.Tensor | None = None, *, backend: str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy MTP verification + slot update in place (tokens [B, S], lengths [B]); see
    :func:`kernels.reference.mtp_accept`. Returns (n_accepted, next_token, num_new), each [B]."""
    b = logits.shape[0]
    if logits.dim() != 3 or tokens.dim() != 2 or tokens.shape[0] != b or lengths.shape != (b,):
        raise ValueError(f"need logits [B, K+1, V], tokens [B, S], lengths [B]; got {tuple(logits.shape)}, "
                         f"{tuple(tokens.shape)}, {tuple(lengths.shape)}")
    if tokens.dtype != torch.long or lengths.dtype != torch.long:
        raise ValueError("tokens and lengths must be int64 (the runtime's DecodeState dtypes)")
    if active is None:
        active = torch.ones(b, dtype=torch.bool, device=logits.device)
    mod = use_triton("mtp_accept", "triton_sampling", logits, backend)
    if mod is None:
        return reference.mtp_accept(logits, tokens, lengths, active)
    if tokens.stride(1) != 1 or not lengths.is_contiguous():
        raise ValueError("the Triton mtp_accept updates tokens/lengths in place: they need unit inner stride")
    return mod.mtp_accept(_rows_contiguous(logits), tokens, lengths, active)


# From this length on, automatic dispatch sends a conv to cuDNN: on an H100 the Triton kernel is
# ~6x slower than cuDNN on a 4096-frame pass (bench/RESULTS.md); it wins nothing there, while on
# streaming chunks it saves the [history | x] concatenation and the separate residual pass.
LONG_CONV_FRAMES = 512


def causal_conv1d(x: torch.Tensor, history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride: int = 1, dilation: int = 1, slope: float | None = None,
                  residual: torch.Tensor | None = None, *, backend: str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of a streaming causal conv (leaky-ReLU input, bias, residual fused); returns
    (out [B, Cout, T // stride], new history [B, Cin, H])."""
    b, c_in, t = x.shape
    c_out, w_in, ksize = weight.shape
    h = (ksize - 1) * dilation + 1 - stride
    if w_in != c_in:
        raise ValueError(f"weight {tuple(weight.shape)} expects {w_in} input channels, x has {c_in}")
    if h < 0 or history.shape != (b, c_in, h):
        raise ValueError(f"history {tuple(history.shape)} must be [B, Cin, (k-1)*dilation+1-stride] = "
                         f"{(b, c_in, h)}")
    if t % stride:
        raise ValueError(f"chunk of {t} frames is not a multiple of stride {stride}")
    if residual is not None and residual.shape != (b, c_out, t // stride):
        raise ValueError(f"residual {tuple(residual.shape)} must be {(b, c_out, t // stride)}")
    if backend is None and t // stride >= LONG_CONV_FRAMES:
        backend = "torch"  # a long offline pass: cuDNN is several times faster than our kernel (H100)
    mod = use_triton("causal_conv1d", "triton_conv", x, backend)
    if mod is None:
        return reference.causal_conv1d(x, history, weight, bias, stride, dilation, slope, residual)
    return mod.causal_conv1d(x, history, weight, bias, stride, dilation, slope, residual)
