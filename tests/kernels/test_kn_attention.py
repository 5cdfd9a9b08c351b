"""Decode / MTP-verify attention over the preallocated KV cache: kernel vs reference vs the runtime."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import ops, reference
from kn_helpers import TARGETS, assert_close, gen, target

# (B, H, Hkv, T, Dh, S): plain decode (T=1), MTP verify (T=k+1), MHA, MQA, odd head_dim and capacity.
SHAPES = [(1, 4, 4, 1, 16, 17), (2, 6, 2, 3, 10, 50), (3, 14, 2, 4, 64, 130), (2, 8, 1, 5, 24, 67)]


def _inputs(b, h, hkv, t, dh, s, dev, dtype, seed, stale=0.0):
    g = gen(seed)
    q = torch.randn(b, t, h, dh, generator=g).to(dev, dtype).transpose(1, 2)   # runtime layout (a view)
    kc = torch.randn(b, hkv, s, dh, generator=g)
    vc = torch.randn(b, hkv, s, dh, generator=g)
    n = torch.randint(0, s - t + 1, (b,), generator=g)
    n[0] = 0                                                  # a slot that just started
    n[-1] = s - t                                             # a slot at the end of its cache
    pos = n[:, None] + torch.arange(t)                        # [B, T]: n .. n+k
    if stale:
        # Entries past each slot's last query position are stale (rejected drafts, older sessions).
        beyond = torch.arange(s)[None, :] > pos[:, -1:]                          # [B, S]
        kc[beyond[:, None, :, None].expand_as(kc)] = stale
        vc[beyond[:, None, :, None].expand_as(vc)] = stale
    return q, kc.to(dev, dtype), vc.to(dev, dtype), pos.to(dev)


@pytest.mark.parametrize("device,dtype", TARGETS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_decode_attention_matches_reference(device, dtype, shape, num_splits):
    dev = target(device)
    q, kc, vc, pos = _inputs(*shape, dev, dtype, seed=sum(shape))
    out = ops.decode_attention(q, kc, vc, pos, backend="triton", num_splits=num_splits)
    assert_close(out, reference.decode_attention(q, kc, vc, pos), dtype, "attention")
    # [B, H, T, Dh] view of a [B, T, H, Dh] buffer: the o_proj input reshape is free.
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("device,dtype", TARGETS)
def test_stale_cache_entries_are_never_read(device, dtype):
    """NaN past each slot's last query position must not reach the output: the kernel stops reading
    at the slot's length instead of masking the whole capacity."""
    dev = target(device)
    shape = (3, 6, 2, 4, 16, 70)
    q, kc, vc, pos = _inputs(*shape, dev, dtype, seed=11, stale=float("nan"))
    out = ops.decode_attention(q, kc, vc, pos, backend="triton", num_splits=2)
    q2, kc2, vc2, _ = _inputs(*shape, dev, dtype, seed=11, stale=0.0)
    assert_close(out, reference.decode_attention(q2, kc2, vc2, pos), dtype, "attention")


def test_reference_is_the_runtime_attention():
    """reference.decode_attention == the runtime's SDPA call with its position mask (GQA)."""
    from runtime.layers import attention_mask

    b, h, hkv, t, dh, s = 2, 6, 2, 4, 16, 40
    q, kc, vc, pos = _inputs(b, h, hkv, t, dh, s, "cpu", torch.float64, seed=3)
    mask = attention_mask(pos, torch.arange(s))
    sdpa = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)
    ref = reference.decode_attention(q, kc, vc, pos)
    # The reference computes in float32 by design; compare at float32 precision.
    assert torch.allclose(ref, sdpa, atol=1e-5, rtol=1e-5)
    assert ref.dtype == q.dtype and math.isfinite(ref.abs().sum().item())
