"""Fused RMSNorm (+residual) and RoPE (+KV-cache write): kernels vs references vs the runtime."""
from __future__ import annotations

import pytest
import torch

from kernels import ops, reference
from kn_helpers import TARGETS, assert_close, gen, target


@pytest.mark.parametrize("device,dtype", TARGETS)
@pytest.mark.parametrize("shape", [(1, 8), (3, 37), (2, 5, 64), (7, 1000)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(device, dtype, shape, with_residual):
    dev = target(device)
    g = gen(hash(shape) % 1000)
    x = (torch.randn(shape, generator=g) * 3).to(dev, dtype)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dev, dtype)
    if with_residual:
        r = torch.randn(shape, generator=g).to(dev, dtype)
        out, h = ops.add_rms_norm(x, r, w, 1e-6, backend="triton")
        ref_out, ref_h = reference.add_rms_norm(x, r, w, 1e-6)
        assert torch.equal(h, ref_h)  # the sum is one rounding on both sides
    else:
        out, ref_out = ops.rms_norm(x, w, 1e-6, backend="triton"), reference.rms_norm(x, w, 1e-6)
    assert out.dtype == ref_out.dtype
    assert_close(out, ref_out, dtype, "elementwise")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_reference_is_the_runtime_norm(dtype):
    from runtime.layers import RMSNorm

    norm = RMSNorm(48, 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(48, generator=gen(1)))
    x = torch.randn(4, 3, 48, generator=gen(2)).to(dtype)
    r = torch.randn(4, 3, 48, generator=gen(3)).to(dtype)
    with torch.no_grad():
        assert torch.equal(reference.rms_norm(x, norm.weight, 1e-6), norm(x))
        out, h = reference.add_rms_norm(x, r, norm.weight, 1e-6)
        assert torch.equal(h, x + r) and torch.equal(out, norm(x + r))


def _rope_inputs(b, h, hkv, t, dh, s, dev, dtype, seed):
    g = gen(seed)
    # Projections come out as transposed views [B, T, H, Dh] -> [B, H, T, Dh] in the runtime.
    q = torch.randn(b, t, h, dh, generator=g).to(dev, dtype).transpose(1, 2)
    k = torch.randn(b, t, hkv, dh, generator=g).to(dev, dtype).transpose(1, 2)
    v = torch.randn(b, t, hkv, dh, generator=g).to(dev, dtype).transpose(1, 2)
    n = torch.randint(0, s - t + 1, (b,), generator=g)
    pos = (n[:, None] + torch.arange(t)).to(dev)                  # distinct positions per slot
    from runtime.layers import Rotary
    rot = Rotary(dh, s, 10_000.0)
    return q, k, v, pos, rot.cos.to(dev), rot.sin.to(dev)


@pytest.mark.parametrize("device,dtype", TARGETS)
@pytest.mark.parametrize("b,h,hkv,t,dh,s", [(1, 4, 2, 1, 16, 8), (2, 6, 2, 3, 10, 21), (3, 14, 2, 4, 64, 40)])
@pytest.mark.parametrize("write_cache", [False, True])
def test_rotary_matches_reference(device, dtype, b, h, hkv, t, dh, s, write_cache):
    dev = target(device)
    q, k, v, pos, cos, sin = _rope_inputs(b, h, hkv, t, dh, s, dev, dtype, seed=b * 100 + dh)
    caches = ref_caches = (None, None)
    if write_cache:
        kc = torch.randn(b, hkv, s, dh, generator=gen(9)).to(dev, dtype)
        caches, ref_caches = (kc, kc.clone() * 2), (kc.clone(), kc.clone() * 2)
    qo, ko = ops.rotary_qk_cache(q, k, pos, cos, sin, v=v if write_cache else None, k_cache=caches[0],
                                 v_cache=caches[1], backend="triton")
    qr, kr = reference.rotary_qk_cache(q, k, v, pos, cos, sin, *ref_caches)
    assert_close(qo, qr, dtype, "elementwise")
    assert_close(ko, kr, dtype, "elementwise")
    assert qo.stride() == q.stride()  # output keeps the (transposed) layout
    if write_cache:
        assert_close(caches[0], ref_caches[0], dtype, "elementwise")
        assert torch.equal(caches[1], ref_caches[1])  # v is copied, not computed


def test_rotary_reference_is_the_runtime_rope():
    from runtime.layers import LayerKV, apply_rotary

    b, h, hkv, t, dh, s = 2, 4, 2, 3, 16, 12
    q, k, v, pos, cos, sin = _rope_inputs(b, h, hkv, t, dh, s, "cpu", torch.float32, seed=5)
    c, sn = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)
    kc, vc = torch.zeros(b, hkv, s, dh), torch.zeros(b, hkv, s, dh)
    kc2, vc2 = kc.clone(), vc.clone()
    qr, kr = reference.rotary_qk_cache(q, k, v, pos, cos, sin, kc, vc)
    assert torch.equal(qr, apply_rotary(q, c, sn)) and torch.equal(kr, apply_rotary(k, c, sn))
    LayerKV(kc2, vc2).write(pos, kr, v)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
