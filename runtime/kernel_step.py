"""The decode step's backbone forward through ``kernels/`` where its dispatcher picks Triton (CUDA).

:class:`DecodeEngine` asks :func:`choose_step_forward` once, at construction, through the kernels'
dispatcher (:func:`kernels.backend.use_triton`): on CUDA with Triton installed the verify forward of
every step runs :func:`kernels.decode_step.forward_cached` (residual adds fused into the norms, RoPE and
the KV write in one launch, attention reading each slot only up to its position); elsewhere it is the
model's own cached forward, so CPU decoding is exactly what it was. The kernels are applied from
outside the model (as gpt-fast applies compile), never as a branch inside it. Prefill stays on the
model's forward: the kernels are written for the k+1 query tokens of a decode step.

``VOXLINE_KERNELS=torch`` (the dispatcher's variable) forces the model's forward; ``backend="triton"``
forces the kernels, which on CPU works only under Triton's interpreter (the kernel tests load it).
"""
from __future__ import annotations

import logging

import torch

from kernels.backend import use_triton
from kernels.decode_step import forward_cached
from runtime.model import AudioLM
from runtime.state import KVCache

log = logging.getLogger(__name__)


class KernelStepForward:
    """``AudioLM.forward(tokens, positions, cache)`` for a decode step, built from the Triton kernels."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tokens, positions [B, K+1]; cache written at ``positions`` -> hidden [B, K+1, D] (final norm)."""
        return forward_cached(self.model, tokens, positions, cache.k, cache.v, backend="triton")


def choose_step_forward(model, backend: str | None = None):
    """The callable the decode step runs its backbone with: :class:`KernelStepForward` when the kernels'
    dispatcher picks Triton for the model's tensors, else the model itself (``backend`` as in
    :mod:`kernels.backend`: None = automatic, "triton", "torch").

    Only a model whose forward *is* ``AudioLM.forward`` qualifies: a subclass or wrapper with its own
    forward keeps it everywhere (``TinyVLM`` reads image rows for image ids; the realtime ``AudioOnlyLM``
    records the positions its constrained ``logits`` read).
    """
    if type(model).forward is not AudioLM.forward:
        return model
    probe = next(model.parameters())
    if use_triton("decode_step", "triton_attention", probe, backend, warn_off_cuda=False) is None:
        return model
    log.info("decode step: backbone forward through the Triton kernels (%s)", probe.device)
    return KernelStepForward(model)
