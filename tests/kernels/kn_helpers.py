"""Shared helpers for the kernel tests: targets (interpreter / CUDA, dtype), error bounds, comparison."""
from __future__ import annotations

import pytest
import torch

# (available, reason when not) — set by conftest before any test runs.
INTERPRETER: tuple[bool, str] = (False, "interpreter not set up")
TRITON_INTERPRET_BEFORE: str | None = None  # the variable's value before conftest touched it



def __getattr__(name: str):
    """``GPU`` and ``TARGETS`` are built on first use: conftest imports this module before its
    ``pytest_configure`` registers the ``gpu`` marker, and touching the mark earlier would warn."""
    if name == "GPU":
        return pytest.mark.gpu
    if name == "TARGETS":
        # Where each kernel runs and in which dtype. CPU: Triton's interpreter, float32 only (its numpy
        # arithmetic is what is checked; half-precision rounding is a GPU question). CUDA: compiled.
        gpu = pytest.mark.gpu
        return [
            pytest.param("cpu", torch.float32, id="interp-fp32"),
            pytest.param("cuda", torch.float32, id="cuda-fp32", marks=gpu),
            pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=gpu),
            pytest.param("cuda", torch.float16, id="cuda-fp16", marks=gpu),
        ]
    raise AttributeError(name)


# Error bounds, per dtype, as ||out - ref|| / ||ref|| (relative L2) and max|out - ref| / max|ref|.
# The reference runs on the same inputs in the same dtype (its internals in float32 as documented).
# float32: both sides compute in float32 and differ only in summation order (dot products are
#   "ieee", not tf32), so 1e-5 is ~100 ulp of slack over observed ~1e-7.
# bfloat16 (8-bit mantissa, ulp 2^-8 ~ 3.9e-3 relative): results are rounded once in the kernel but
#   several times in the reference (e.g. x*cos, rot*sin, their sum), so elementwise ops may differ
#   by ~2 ulp; attention multiplies rounded probabilities by V: METHOD.md's 1e-3..1e-2 band.
# float16 (11-bit mantissa, ulp 2^-11 ~ 4.9e-4): the same reasoning at 8x finer rounding.
BOUNDS = {
    torch.float32: {"elementwise": (1e-5, 1e-5), "attention": (1e-5, 1e-5), "conv": (1e-5, 1e-5)},
    torch.bfloat16: {"elementwise": (8e-3, 1.6e-2), "attention": (1e-2, 2e-2), "conv": (1e-2, 2e-2)},
    torch.float16: {"elementwise": (1e-3, 2e-3), "attention": (2e-3, 4e-3), "conv": (2e-3, 4e-3)},
}


def target(device: str) -> torch.device:
    """Skip unless ``device`` can run Triton kernels here; the torch device to put tensors on."""
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device: GPU kernel tests need one")
        from kernels.backend import triton_available
        if not triton_available():
            pytest.skip("triton is not installed")
        return torch.device("cuda")
    ok, reason = INTERPRETER
    if not ok:
        pytest.skip(reason)
    return torch.device("cpu")


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, kind: str) -> None:
    """Relative-L2 and relative-max bounds from :data:`BOUNDS`; NaN or Inf never passes."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    o, r = out.double(), ref.double()
    assert torch.isfinite(o).all(), "non-finite values in the kernel output"
    rel_l2, rel_max = BOUNDS[dtype][kind]
    scale = r.abs().max().clamp_min(1e-30)
    l2 = ((o - r).norm() / r.norm().clamp_min(1e-30)).item()
    mx = ((o - r).abs().max() / scale).item()
    assert l2 <= rel_l2 and mx <= rel_max, f"rel L2 {l2:.3g} (bound {rel_l2}), rel max {mx:.3g} (bound {rel_max})"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
