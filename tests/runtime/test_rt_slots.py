"""Sessions are batch slots: batched == alone, reset reuses a slot, paused slots keep their state,
and a session continues after a stop exactly as plain decoding would."""
from __future__ import annotations

import pytest
import torch
from rt_helpers import prompts, tiny

from runtime.engine import DecodeEngine
from runtime.generate import generate
from runtime.sampling import SamplingParams

NEW = 20


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def two(model):
    a, b = prompts(model.config.vocab_size, 2, 3, 11, seed=8)
    assert len(a) != len(b)
    return a, b


@pytest.mark.parametrize("k", [0, 3])
def test_two_sessions_in_one_batch_equal_each_alone(model, two, k):
    a, b = two
    both = generate(DecodeEngine(model, batch=2, capacity=64, n_draft=k), [a, b], max_new_tokens=NEW)
    alone_a = generate(DecodeEngine(model, batch=1, capacity=64, n_draft=k), [a], max_new_tokens=NEW)
    alone_b = generate(DecodeEngine(model, batch=1, capacity=64, n_draft=k), [b], max_new_tokens=NEW)
    assert both.tokens == [alone_a.tokens[0], alone_b.tokens[0]]


def test_greedy_slot_unaffected_by_a_sampling_neighbour(model, two):
    a, b = two
    eng = DecodeEngine(model, batch=2, capacity=64, n_draft=2, seed=1)
    mixed = generate(eng, [a, b], params=[SamplingParams(), SamplingParams(temperature=1.0)],
                     max_new_tokens=NEW)
    alone = generate(DecodeEngine(model, batch=1, capacity=64, n_draft=2), [a], max_new_tokens=NEW)
    assert mixed.tokens[0] == alone.tokens[0]
    assert mixed.tokens[1] != alone.tokens[0]


@pytest.mark.parametrize("k", [0, 3])
def test_reset_slot_serves_a_new_session_and_leaves_the_other(model, two, k):
    a, b = two
    c = prompts(model.config.vocab_size, 1, 5, 5, seed=9)[0]
    eng = DecodeEngine(model, batch=2, capacity=96, n_draft=k)
    first = generate(eng, [a, b], max_new_tokens=NEW)
    # Slot 0 gets a new session; slot 1 keeps its cache.
    again = generate(eng, [c], max_new_tokens=NEW, slots=[0])
    fresh = generate(DecodeEngine(model, batch=1, capacity=96, n_draft=k), [c], max_new_tokens=NEW)
    assert again.tokens == fresh.tokens
    # Slot 1 continues its conversation: same as one long uncached history would give.
    more = [1, 2, 3]
    nxt = eng.extend(1, more)
    ref = DecodeEngine(model, batch=1, capacity=96, n_draft=k)
    ref.reset(0)
    assert nxt == ref.extend(0, b + first.tokens[1] + more)


def _stream(eng, slot, active_plan):
    """Run steps with the given per-step active masks; return the tokens slot ``slot`` emitted."""
    out = []
    for active in active_plan:
        new, num = eng.step(torch.tensor(active))
        eng.commit(num.tolist())
        out += new[slot, :num[slot]].tolist()
    return out


@pytest.mark.parametrize("k", [0, 1, 3])
def test_paused_slot_resumes_exactly(model, two, k):
    a, b = two
    eng = DecodeEngine(model, batch=2, capacity=128, n_draft=k)
    eng.reset(0), eng.reset(1)
    first_b = eng.extend(1, b)
    eng.extend(0, a)
    plan = [[True, True]] * 3 + [[True, False]] * 4 + [[True, True]] * 4
    got = [first_b] + _stream(eng, 1, plan)
    solo = DecodeEngine(model, batch=1, capacity=128, n_draft=k)
    solo.reset(0)
    ref = [solo.extend(0, b)] + _stream(solo, 0, [[True]] * 7)
    assert got == ref[:len(got)] and len(got) >= 8


@pytest.mark.parametrize("k", [1, 3])
def test_stop_rolls_back_then_next_turn_matches_plain(model, two, k):
    a, _ = two
    plain_first = generate(DecodeEngine(model, batch=1, capacity=128), [a], max_new_tokens=NEW).tokens[0]
    stop = plain_first[6]           # a token plain decoding emits mid-way
    user_turn = [4, 5, 6, 7]
    results = []
    for n_draft in (0, k):
        eng = DecodeEngine(model, batch=1, capacity=128, n_draft=n_draft)
        r1 = generate(eng, [a], max_new_tokens=NEW, stop_ids=[stop])
        assert r1.finish == ["stop"] and r1.tokens[0][-1] == stop
        first = eng.extend(0, user_turn)   # the stop token is pending; the user speaks next
        rest = []
        for _ in range(6):
            new, num = eng.step()
            eng.commit(num.tolist())
            rest += new[0, :num[0]].tolist()
        results.append((r1.tokens, eng.slots[0].length - len(rest), [first] + rest[:6]))
    assert results[0] == results[1]
