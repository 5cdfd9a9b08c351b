"""The kernels composed into a Qwen2 verify step (``kernels.decode_step``) reproduce the runtime:
the tiny ``AudioLM``'s cached forward, greedy verification and slot bookkeeping."""
from __future__ import annotations

import pytest
import torch

from kernels.decode_step import forward_cached, verify_step
from kn_helpers import TARGETS, gen, target


def _engine_verify(model, st, k):
    """DecodeEngine.step's verify half on a runtime DecodeState (greedy)."""
    from voxcore.verify import GreedyVerifier

    cap = st.capacity
    n = st.lengths.clone()
    vpos = (n[:, None] + torch.arange(k + 1, device=n.device)).clamp(max=cap - 1)
    vtok = st.tokens.gather(1, vpos)
    h = model(vtok, vpos, st.kv)
    n_acc, nxt = GreedyVerifier()(model.logits(h), vtok[:, 1:], None, None)
    bpos = (n + n_acc + 1).clamp(max=cap - 1)[:, None]
    st.tokens.scatter_(1, bpos, nxt[:, None])
    st.lengths.copy_(n + n_acc + 1)
    return n_acc, nxt, h


@pytest.mark.parametrize("device,dtype", TARGETS[:2])  # float32: token-exact comparisons need it
def test_verify_step_reproduces_the_runtime(device, dtype):
    dev = target(device)
    from runtime.model import build_model
    from runtime.presets import tiny_config
    from runtime.state import DecodeState

    cfg = tiny_config(text_vocab_size=32, audio_offset=32, linguistic_size=16, semantic_size=16, n_mtp=0)
    model = build_model(cfg, seed=3, init_std=0.05, device=dev)
    b, k, cap = 3, 3, 40
    ours = DecodeState.allocate(model, b, cap, 0)
    theirs = DecodeState.allocate(model, b, cap, 0)
    g = gen(2)
    lengths = [0, 9, cap - 3]  # a fresh slot, a running one, one at the capacity edge
    with torch.no_grad():
        for i, n in enumerate(lengths):
            seq = torch.randint(0, cfg.vocab_size, (1, n + 1), generator=g).to(dev)  # prompt + pending
            if i == 1:  # drafts = the model's own greedy continuation: all should be accepted
                for _ in range(k):
                    seq = torch.cat([seq, model.logits(model(seq))[:, -1:].argmax(-1)], dim=1)
            else:
                seq = torch.cat([seq, torch.randint(0, cfg.vocab_size, (1, k), generator=g).to(dev)], dim=1)
            for st in (ours, theirs):
                if n:  # prefill positions [0, n) through the runtime's own cached forward
                    model(seq[:, :n], torch.arange(n, device=dev)[None], st.kv.slots(i, i + 1))
                m = min(n + k + 1, cap)
                st.tokens[i, :m] = seq[0, :m]
                st.lengths[i] = n
    n_acc, nxt, h_ref = _engine_verify(model, theirs, k)
    kv = ours.kv
    vpos = (ours.lengths[:, None] + torch.arange(k + 1, device=dev)).clamp(max=cap - 1)
    h_ours = forward_cached(model, ours.tokens.gather(1, vpos), vpos, kv.k.clone(), kv.v.clone(), backend="triton")
    assert torch.allclose(h_ours, h_ref, atol=1e-4, rtol=1e-4)
    got = verify_step(model, ours.tokens, ours.lengths, kv.k, kv.v, k, backend="triton")
    assert torch.equal(got[0], n_acc) and torch.equal(got[1], nxt)
    assert torch.equal(ours.tokens, theirs.tokens) and torch.equal(ours.lengths, theirs.lengths)
    assert torch.allclose(kv.k, theirs.kv.k, atol=1e-5) and torch.allclose(kv.v, theirs.kv.v, atol=1e-5)
    assert got[0][1] == k, "slot 1's drafts are the greedy continuation: all accepted"


@pytest.mark.parametrize("device,dtype", TARGETS[:2])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_packed_projections_give_the_same_step(device, dtype, qkv_bias):
    """Fused q/k/v and gate/up products (``pack_projections``) change launches, not results."""
    dev = target(device)
    from kernels.decode_step import pack_projections
    from runtime.model import build_model
    from runtime.presets import tiny_config

    cfg = tiny_config(text_vocab_size=32, audio_offset=32, linguistic_size=16, semantic_size=16, n_mtp=0,
                      qkv_bias=qkv_bias)
    model = build_model(cfg, seed=5, init_std=0.05, device=dev)
    if qkv_bias:
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1, generator=None)
    b, t, cap = 2, 4, 24
    L, hkv, dh = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
    g = gen(7)
    tokens = torch.randint(0, cfg.vocab_size, (b, t), generator=g).to(dev)
    positions = (torch.tensor([0, 11])[:, None] + torch.arange(t)).to(dev)
    caches = [torch.randn(L, b, hkv, cap, dh, generator=g).to(dev) for _ in range(2)]
    plain_k, plain_v = caches[0].clone(), caches[1].clone()
    pk, pv = caches[0].clone(), caches[1].clone()
    h_plain = forward_cached(model, tokens, positions, plain_k, plain_v, backend="triton")
    h_packed = forward_cached(model, tokens, positions, pk, pv, backend="triton", packed=pack_projections(model))
    assert torch.allclose(h_packed, h_plain, atol=1e-5, rtol=1e-5)
    assert torch.allclose(pk, plain_k, atol=1e-6) and torch.allclose(pv, plain_v, atol=1e-6)
