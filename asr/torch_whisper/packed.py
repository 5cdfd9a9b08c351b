"""CPU inference packing for the frozen decoder: oneDNN pre-packed float32 linears, applied from outside.

Why: at decode sizes (1 to ~6 rows against a 512 x 51865 output head and 36 smaller weights) torch's default
float32 GEMM path on this machine's AMD EPYC (MKL) costs about ``rows x`` the one-row time, which would make
verifying k draft tokens in one pass cost nearly k passes. oneDNN with weights reordered once for a small
batch keeps a 4-row product at or below the 1-row cost, and its per-row results do not change with the
number of rows (checked in the tests), so plain and multi-token decoding compute the same logits.

Still float32 everywhere: this changes where the work happens, not the arithmetic precision. Without
oneDNN (``torch.backends.mkldnn.is_available()`` false) :func:`pack_decoder` leaves the model as it is.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

#: rows the weights are laid out for; a verify pass feeds 1 + k <= 4 tokens
BATCH_HINT = 4


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` reordered once by oneDNN (inference only, no autograd). float32, or
    bfloat16 when ``weight`` is (the MTP drafter's choice: drafts need not be exact; ``x`` must match).

    ``W`` and ``b`` stay registered under nn.Linear's names (``persistent``: in the state dict), so a packed
    module still reads like the layer it replaced, e.g. to copy its weights into an MTP head.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int = BATCH_HINT,
                 persistent: bool = True) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        dtype = weight.dtype if weight.dtype == torch.bfloat16 else torch.float32
        self.register_buffer("weight", weight.detach().to(dtype).contiguous(), persistent=persistent)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype).contiguous(),
                             persistent=persistent)
        # A plain attribute, not a buffer: an opaque oneDNN layout, not checkpoint data.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, batch_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _pack_children(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
    n = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name not in skip:
                setattr(parent, name, PackedLinear(child.weight, child.bias))
                n += 1
    return n


def pack_decoder(model: nn.Module) -> nn.Module:
    """Swap the decoder's per-step linears and its output head for :class:`PackedLinear` (in place).

    The cross-attention ``kv`` projections (run once per utterance over 1500 frames) keep torch's GEMM.
    Returns the model; a no-op without oneDNN.
    """
    if not available():
        log.warning("oneDNN is not available: the torch Whisper decoder runs unpacked (slower at 2+ rows)")
        return model
    dec = model.decoder
    _pack_children(dec.blocks, skip=("kv",))
    dec.head = PackedLinear(dec.token_embedding.weight, None, persistent=False)  # tied: stored once
    return model


def bf16_available() -> bool:
    return available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_heads(module: nn.Module) -> nn.Module:
    """Pack every linear of a (trained, frozen) module, e.g. the MTP drafter's blocks, in the module's dtype;
    a no-op without oneDNN."""
    if available():
        _pack_children(module, skip=("kv",))
    return module
