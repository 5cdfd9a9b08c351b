"""KV cache: incremental == offline, chunked prefill == one shot, causality, rollback by position.

Tolerances: float64 models must agree to 1e-9 absolute on logits (different summation orders
only); the float32 check allows 1e-4 on logits of magnitude ~1.
"""
from __future__ import annotations

import pytest
import torch
from rt_helpers import prompts, tiny

from runtime.engine import DecodeEngine
from runtime.generate import generate
from runtime.state import KVCache


def _cache(model, batch: int = 1, capacity: int = 64) -> KVCache:
    c = model.config
    p = next(model.parameters())
    return KVCache.allocate(c.n_layers, batch, c.n_kv_heads, capacity, c.head_dim, p.dtype, p.device)


@torch.no_grad()
def _chunked_logits(model, seq: torch.Tensor, chunk: int, cache: KVCache) -> torch.Tensor:
    """seq [1, T] fed through the cache in chunks -> logits [1, T, V]."""
    outs = []
    for c0 in range(0, seq.shape[1], chunk):
        c1 = min(c0 + chunk, seq.shape[1])
        outs.append(model.logits(model(seq[:, c0:c1], torch.arange(c0, c1)[None], cache)))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_incremental_decode_matches_full_forward(dtype, atol):
    model = tiny(dtype=dtype)
    seq = torch.tensor([prompts(model.config.vocab_size, 1, 23, 23, seed=3)[0]])
    with torch.no_grad():
        full = model.logits(model(seq))                                 # [1, T, V] no cache
    step = _chunked_logits(model, seq, 1, _cache(model))
    assert full.abs().max() > 0.1  # non-trivial logits, so the tolerance means something
    torch.testing.assert_close(step, full, atol=atol, rtol=0)


@pytest.mark.parametrize("length", [1, 2, 7, 13, 31])
@pytest.mark.parametrize("chunk", [1, 2, 7])
def test_chunked_prefill_matches_one_shot(length, chunk):
    model = tiny()
    seq = torch.tensor([prompts(model.config.vocab_size, 1, length, length, seed=length)[0]])
    one_cache, ch_cache = _cache(model), _cache(model)
    one = _chunked_logits(model, seq, length, one_cache)
    chunked = _chunked_logits(model, seq, chunk, ch_cache)
    torch.testing.assert_close(chunked, one, atol=1e-9, rtol=0)
    # The caches must hold the same entries: the next token's logits agree from both.
    nxt = torch.tensor([[5]])
    pos = torch.tensor([[length]])
    with torch.no_grad():
        a = model.logits(model(nxt, pos, one_cache))
        b = model.logits(model(nxt, pos, ch_cache))
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_appending_never_changes_earlier_logits():
    model = tiny()
    base = prompts(model.config.vocab_size, 1, 9, 9, seed=11)[0]
    longer = base + prompts(model.config.vocab_size, 1, 6, 6, seed=12)[0]
    with torch.no_grad():
        a = model.logits(model(torch.tensor([base])))
        b = model.logits(model(torch.tensor([longer])))[:, :len(base)]
        ha, hb = model(torch.tensor([base])), model(torch.tensor([longer]))
        ma = model.mtp_offline(ha, torch.tensor([base]), 3)
        mb = model.mtp_offline(hb, torch.tensor([longer]), 3)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    for k, (ga, gb) in enumerate(zip(ma, mb)):  # MTP depths are causal too
        torch.testing.assert_close(ga, gb[:, :ga.shape[1]], atol=1e-9, rtol=0, msg=f"depth {k}")
    # Changing a later token changes later logits (the test above could not pass vacuously).
    changed = longer[:-1] + [(longer[-1] + 1) % model.config.vocab_size]
    with torch.no_grad():
        c = model.logits(model(torch.tensor([changed])))
        full_b = model.logits(model(torch.tensor([longer])))
    assert not torch.allclose(c[:, -1], full_b[:, -1])
    torch.testing.assert_close(c[:, :-1], full_b[:, :-1], atol=1e-9, rtol=0)


def test_rollback_is_only_the_length():
    """Entries written past the length (rejected drafts) are masked until overwritten."""
    model = tiny()
    seq = torch.tensor([prompts(model.config.vocab_size, 1, 12, 12, seed=5)[0]])
    clean, dirty = _cache(model), _cache(model)
    _chunked_logits(model, seq[:, :8], 8, clean)
    _chunked_logits(model, seq[:, :8], 8, dirty)
    junk = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.no_grad():
        model(junk, torch.arange(8, 14)[None], dirty)     # "drafts" at 8..13, then rejected
        a = model.logits(model(seq[:, 8:10], torch.arange(8, 10)[None], clean))
        b = model.logits(model(seq[:, 8:10], torch.arange(8, 10)[None], dirty))
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("k", [0, 3])
def test_engine_chunked_extend_gives_same_tokens(k):
    model = tiny()
    ps = prompts(model.config.vocab_size, 6, 5, 17, seed=21)
    ref = generate(DecodeEngine(model, batch=6, capacity=96, n_draft=k), ps, max_new_tokens=12)
    for chunk in (1, 2, 7):
        out = generate(DecodeEngine(model, batch=6, capacity=96, n_draft=k), ps, max_new_tokens=12, chunk=chunk)
        assert out.tokens == ref.tokens, f"chunk={chunk}"
