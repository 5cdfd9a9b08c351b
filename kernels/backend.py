"""Which implementation runs: a Triton kernel or its plain-torch reference.

Triton is optional. Nothing here imports it at module load: the Triton modules (``kernels.triton_*``)
are imported on first use, inside a ``try``, so ``import kernels`` works on a machine without Triton
and every op then runs its reference (with a one-time :class:`KernelFallbackWarning` per op).

Choice per call (``backend=None`` means automatic):

* ``"triton"`` — force the kernel (raises if Triton is missing). On CPU tensors this only works when
  the Triton modules were imported under ``TRITON_INTERPRET=1`` (the CPU tests do that).
* ``"torch"``  — force the reference.
* automatic — the kernel when Triton imports and the tensors are on CUDA, unless the environment
  variable ``VOXLINE_KERNELS=torch`` says otherwise; the reference (with a warning) elsewhere.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

BACKENDS = ("triton", "torch")
ENV_VAR = "VOXLINE_KERNELS"  # "auto" (default) | "torch" | "triton"


class KernelFallbackWarning(UserWarning):
    """A Triton kernel was not used and the plain-torch reference ran instead."""


_modules: dict[str, ModuleType | None] = {}
_import_errors: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()


def triton_module(name: str) -> ModuleType | None:
    """``kernels.<name>`` (a module that imports triton), or None when it cannot be imported."""
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"kernels.{name}")
        except Exception as exc:  # triton missing (ImportError), too old, or a broken install
            _modules[name] = None
            _import_errors[name] = f"{type(exc).__name__}: {exc}"
    return _modules[name]


def triton_available() -> bool:
    """True when the ``triton`` package imports (does not say whether a GPU is present)."""
    return triton_module("triton_norm") is not None


def interpreting() -> bool:
    """True when the loaded Triton kernels run in Triton's CPU interpreter."""
    mod = triton_module("triton_norm")
    return bool(mod is not None and getattr(mod, "INTERPRETED", False))


def _warn_once(op: str, reason: str) -> None:
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"kernels.{op}: {reason}; running the plain-torch reference",
                      KernelFallbackWarning, stacklevel=4)


def reset_warnings() -> None:
    """Forget which fallbacks were already reported (tests)."""
    _warned.clear()


def use_triton(op: str, module: str, tensor: torch.Tensor, backend: str | None,
               warn_off_cuda: bool = True) -> ModuleType | None:
    """The Triton module to run ``op`` with, or None for the reference.

    ``backend`` overrides the automatic choice (see the module docstring). ``warn_off_cuda=False`` is for
    a caller whose torch path is the intended one off CUDA (the runtime's CPU decode step): automatic
    dispatch of a non-CUDA tensor then returns None silently, without importing Triton.
    """
    if backend is None:
        backend = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"{ENV_VAR}={backend!r}: use auto, triton or torch")
    elif backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: use 'triton', 'torch' or None (automatic)")
    forced = backend == "triton"
    if backend == "torch":
        return None
    if not forced and not tensor.is_cuda and not warn_off_cuda:
        return None  # the caller's torch path is the intended one here: not even importing triton
    mod = triton_module(module)
    if mod is None:
        if forced:
            raise RuntimeError(f"kernels.{op}: Triton kernel requested but unavailable "
                               f"({_import_errors.get(module, 'import failed')})")
        _warn_once(op, "Triton is not installed")
        return None
    if tensor.is_cuda or (forced and mod.INTERPRETED):
        return mod
    if forced:
        raise RuntimeError(f"kernels.{op}: Triton kernel requested for a {tensor.device.type} tensor; "
                           "Triton runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1 set "
                           "before the first kernels import)")
    _warn_once(op, f"tensors on {tensor.device.type}, Triton needs CUDA")
    return None
