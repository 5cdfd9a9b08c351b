"""Fused sampling and greedy MTP acceptance: kernels vs references vs the runtime's sampler/verifier."""
from __future__ import annotations

import pytest
import torch

from kernels import ops, reference
from kn_helpers import TARGETS, gen, target

# One row per case: (temperature, top_k, top_p). Greedy, each filter alone, both, k >= V, tiny p.
ROWS = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.9), (0.5, 20, 0.6), (2.0, 10_000, 0.95),
        (1.0, 1, 1.0), (0.9, 0, 0.05)]


def _params(dev):
    t, k, p = zip(*ROWS)
    return (torch.tensor(t, device=dev), torch.tensor(k, device=dev), torch.tensor(p, device=dev))


def _boundary_rows(logits, temp, top_k, top_p, uniform, tol=1e-4):
    """Rows whose draw sits within ``tol`` of a decision boundary (top-p cut or CDF step), where
    float32 summation order may legitimately flip the outcome."""
    w = reference.filtered_weights(logits.cpu(), temp.cpu(), top_k.cpu(), top_p.cpu())
    z = w.sum(-1, keepdim=True)
    cum = w.cumsum(-1) / z
    near_cdf = ((cum - uniform.cpu()[:, None]).abs() < tol).any(-1)
    x = logits.cpu().float()
    wk = reference.filtered_weights(logits.cpu(), temp.cpu(), top_k.cpu(), torch.ones_like(top_p.cpu()))
    above = torch.stack([(wk * (x > x[:, i:i + 1])).sum(-1) for i in range(x.shape[1])], -1) / wk.sum(-1, True)
    near_p = ((above - top_p.cpu()[:, None]).abs() < tol).any(-1)
    return near_cdf | near_p


@pytest.mark.parametrize("device,dtype", TARGETS)
@pytest.mark.parametrize("vocab,block", [(97, None), (300, None), (300, 64)])
def test_sample_matches_reference(device, dtype, vocab, block):
    """``block`` smaller than the vocabulary exercises the multi-block passes (carried cumsum)."""
    dev = target(device)
    g = gen(vocab)
    temp, top_k, top_p = _params(dev)
    r = len(ROWS)
    logits = (torch.randn(r, vocab, generator=g) * 3).to(dev, dtype)
    uniform = torch.rand(r, generator=g).to(dev)
    if block is None:
        got = ops.sample(logits, temp, top_k, top_p, uniform, backend="triton")
    else:
        from kernels.triton_sampling import sample as triton_sample
        got = triton_sample(logits, temp, top_k, top_p, uniform, block=block)
    want = reference.sample(logits, temp, top_k, top_p, uniform)
    differ = (got != want).cpu()
    assert not (differ & ~_boundary_rows(logits, temp, top_k, top_p, uniform)).any(), (got, want)
    w = reference.filtered_weights(logits, temp, top_k, top_p).cpu()
    sampled = temp.cpu() > 0
    assert (w[sampled].gather(1, got.cpu()[sampled][:, None]) > 0).all(), "drew a filtered-out token"


def test_sample_follows_the_distribution():
    """A uniform grid through the inverse CDF reproduces the filtered distribution (kernel path)."""
    dev = target("cpu")
    v, n = 12, 32
    logits = torch.randn(1, v, generator=gen(4)).expand(n, v).contiguous()
    # Top-p only: each row costs ~32 bisection passes in the interpreter (top-k would double it).
    temp, top_k, top_p = torch.full((n,), 0.8), torch.full((n,), 0), torch.full((n,), 0.9)
    u = (torch.arange(n) + 0.5) / n
    got = ops.sample(logits.to(dev), temp, top_k, top_p, u, backend="triton").cpu()
    w = reference.filtered_weights(logits[:1], temp[:1], top_k[:1], top_p[:1])[0]
    freq = torch.bincount(got, minlength=v).float() / n
    assert (freq - w / w.sum()).abs().max() <= 1.0 / n + 1e-6


def test_filtered_weights_are_the_runtime_sampler_probs():
    from runtime.sampling import Sampler, SamplingParams

    temp, top_k, top_p = _params("cpu")
    sampler = Sampler(len(ROWS))
    for i, (t, k, p) in enumerate(ROWS):
        sampler.set(i, SamplingParams(temperature=t, top_k=k, top_p=p))
    logits = torch.randn(len(ROWS), 1, 200, generator=gen(8)) * 3
    probs = sampler.probs(logits)[:, 0]
    w = reference.filtered_weights(logits[:, 0], temp, top_k, top_p)
    mine = w / w.sum(-1, keepdim=True)
    sampled = temp > 0
    assert torch.allclose(mine[sampled], probs[sampled], atol=1e-6)
    greedy = reference.sample(logits[:, 0], temp, top_k, top_p, torch.rand(len(ROWS)))
    assert torch.equal(greedy[~sampled], probs[~sampled].argmax(-1))


def _accept_case(b, k1, v, s, dev, dtype, seed):
    g = gen(seed)
    logits = torch.randn(b, k1, v, generator=g).to(dev, dtype)
    tokens = torch.randint(0, v, (b, s), generator=g)
    lengths = torch.randint(0, s - k1, (b,), generator=g)
    lengths[-1] = s - 2                                 # drafts run past the capacity: positions clamp
    target_ids = logits.float().argmax(-1).cpu()
    for i in range(b):                                  # slot i: the first i % (k1) drafts are right
        n, good = int(lengths[i]), i % k1
        for j in range(min(good, k1 - 1)):
            if n + 1 + j < s:
                tokens[i, n + 1 + j] = target_ids[i, j]
    active = torch.ones(b, dtype=torch.bool)
    active[1::3] = False
    return logits, tokens.to(dev), lengths.to(dev), active.to(dev)


@pytest.mark.parametrize("device,dtype", TARGETS)
@pytest.mark.parametrize("b,k1,v,s,chunk", [(1, 1, 50, 9, None), (5, 4, 300, 33, None), (7, 3, 1500, 20, None),
                                            (4, 4, 1000, 24, 128)])
def test_mtp_accept_matches_reference(device, dtype, b, k1, v, s, chunk):
    """``chunk`` splits each row's argmax over 8 programs (the merge across chunks)."""
    dev = target(device)
    logits, tokens, lengths, active = _accept_case(b, k1, v, s, dev, dtype, seed=b + v)
    t1, l1, t2, l2 = tokens.clone(), lengths.clone(), tokens.clone(), lengths.clone()
    if chunk is None:
        got = ops.mtp_accept(logits, t1, l1, active, backend="triton")
    else:
        from kernels.triton_sampling import mtp_accept as triton_accept
        got = triton_accept(logits, t1, l1, active, chunk=chunk, block=64)
    want = reference.mtp_accept(logits, t2, l2, active)
    for a, w in zip(got, want):
        assert torch.equal(a, w)
    assert torch.equal(t1, t2) and torch.equal(l1, l2)


def test_mtp_accept_reference_is_the_engine_bookkeeping():
    """reference.mtp_accept == GreedyVerifier + the token/length updates of DecodeEngine.step."""
    from voxcore.verify import GreedyVerifier

    b, k1, v, s = 6, 4, 80, 30
    logits, tokens, lengths, active = _accept_case(b, k1, v, s, "cpu", torch.float32, seed=1)
    t2, l2 = tokens.clone(), lengths.clone()
    n_acc, nxt, num_new = reference.mtp_accept(logits, tokens, lengths, active)
    # DecodeEngine.step, verify half, written out with its own names.
    n = l2.clone()
    offs = torch.arange(k1)
    vpos = (n[:, None] + offs).clamp(max=s - 1)
    vtok = t2.gather(1, vpos)
    e_acc, e_nxt = GreedyVerifier()(logits, vtok[:, 1:], None, None)
    e_num = torch.where(active, e_acc + 1, torch.zeros_like(e_acc))
    bpos = (n + e_acc + 1).clamp(max=s - 1)[:, None]
    t2.scatter_(1, bpos, torch.where(active, e_nxt, t2.gather(1, bpos)[:, 0])[:, None])
    l2.copy_(n + e_num)
    assert torch.equal(n_acc, e_acc) and torch.equal(nxt, e_nxt) and torch.equal(num_new, e_num)
    assert torch.equal(tokens, t2) and torch.equal(lengths, l2)
    assert set(n_acc.tolist()) >= {0, k1 - 1}, "cases should cover none and all drafts accepted"
