"""Triton kernels for the decode hot path, each beside a plain-torch reference.

Public ops (all in :mod:`kernels.ops`; semantics defined in :mod:`kernels.reference`):

=================  ===========================================================================
``rms_norm``       RMSNorm (float32 statistics), ``add_rms_norm`` fuses the residual add
``rotary_qk_cache``  rotate-half RoPE on q and k, optionally writing k and v into the KV cache
``decode_attention``  k+1 query tokens per slot over a preallocated ``[B, Hkv, S, Dh]`` cache, GQA
``sample``         fused temperature / top-k / top-p sampling (reproducible from a uniform tensor)
``mtp_accept``     greedy MTP acceptance + next token + KV length update, on the device
``causal_conv1d``  streaming causal conv with cached left state (vocoder), leaky-ReLU/residual fused
=================  ===========================================================================

Triton runs on CUDA tensors; elsewhere, or when ``triton`` is not installed, each op runs its
reference and warns once (:class:`KernelFallbackWarning`). Importing this package never imports
triton. ``VOXLINE_KERNELS=torch`` forces the references.
"""
from kernels.backend import KernelFallbackWarning, triton_available
from kernels.ops import (add_rms_norm, causal_conv1d, decode_attention, mtp_accept, rms_norm, rotary_qk_cache,
                         sample)

__all__ = ["KernelFallbackWarning", "add_rms_norm", "causal_conv1d", "decode_attention", "mtp_accept", "rms_norm",
           "rotary_qk_cache", "sample", "triton_available"]
