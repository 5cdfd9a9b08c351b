"""``DecodeEngine.reset(slot, keep=n)``: a slot keeps the first n cached positions of its previous
session (prefix reuse), and continuing from them equals a fresh prefill of the same tokens."""
from __future__ import annotations

import pytest
import torch
from rt_helpers import prompts, tiny

from runtime.engine import DecodeEngine


@pytest.fixture(scope="module")
def model():
    return tiny(n_mtp=2)


@pytest.mark.parametrize("k", [0, 2])
def test_kept_prefix_gives_the_logits_of_a_fresh_prefill(model, k):
    (seq,) = prompts(model.config.vocab_size, 1, 14, 14, seed=3)
    old = DecodeEngine(model, batch=2, capacity=64, n_draft=k)
    old.extend(1, seq[:12])
    for _ in range(3):                                   # decode a little past the prompt, then leave
        _, num = old.step()
        old.commit(num.tolist())
    old.park(1)
    assert old.cached_tokens(1)[:12] == seq[:12]
    old.reset(1, keep=6)
    got = old.extend(1, seq[6:10])
    got_logits = model.logits(old.last_hidden[:, -1])

    fresh = DecodeEngine(model, batch=2, capacity=64, n_draft=k)
    want = fresh.extend(1, seq[:10])
    want_logits = model.logits(fresh.last_hidden[:, -1])
    assert got == want
    assert torch.allclose(got_logits, want_logits, atol=1e-10)
    if k:   # the drafts proposed after the prefill match too (MTP caches of the kept prefix are valid)
        assert torch.equal(old.state.tokens[1, 10:11 + k], fresh.state.tokens[1, 10:11 + k])
    assert old.slots[1].length == fresh.slots[1].length == 10


def test_keep_cannot_exceed_what_the_slot_holds(model):
    eng = DecodeEngine(model, batch=1, capacity=32)
    eng.extend(0, [1, 2, 3, 4])
    eng.park(0)
    assert eng.slots[0].length == 0 and eng.cached_tokens(0) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="holds only 4"):
        eng.reset(0, keep=5)
    eng.reset(0)                                          # a plain reset forgets the parked cache
    assert eng.cached_tokens(0) == []
    with pytest.raises(ValueError):
        eng.reset(0, keep=1)


def test_attend_over_a_shorter_view_changes_nothing(model):
    a, b = prompts(model.config.vocab_size, 2, 5, 9, seed=4)
    full, cut = (DecodeEngine(model, batch=2, capacity=64) for _ in range(2))
    outs = []
    for eng, window in ((full, 64), (cut, 24)):
        eng.extend(0, a)
        eng.extend(1, b)
        eng.attend_over(window)
        steps = []
        for _ in range(6):
            new, num = eng.step()
            eng.commit(num.tolist())
            steps.append(new[:, 0].tolist())
        outs.append(steps)
    assert outs[0] == outs[1]
    assert cut.state.kv.k.shape[3] == 24 and cut.capacity == 64
    with pytest.raises(ValueError):
        cut.attend_over(65)
