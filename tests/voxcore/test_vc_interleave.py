"""Interleave / split of the two codebooks into LLM ids (Step-Audio 2:3 groups)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from voxcore.interleave import GROUP_SIZE, STEP_AUDIO_LAYOUT, AudioTokenLayout, interleave, split, split_whole_groups

layouts = st.builds(AudioTokenLayout, offset=st.integers(0, 70000), n_linguistic=st.integers(1, 1024),
                    n_semantic=st.integers(1, 4096))


@st.composite
def codes(draw):
    layout = draw(layouts)
    groups = draw(st.integers(0, 12))
    batch = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    ling = torch.randint(0, layout.n_linguistic, (*batch, 2 * groups), generator=g)
    sem = torch.randint(0, layout.n_semantic, (*batch, 3 * groups), generator=g)
    return layout, ling, sem


@settings(max_examples=150, deadline=None)
@given(codes())
def test_split_inverts_interleave(case):
    layout, ling, sem = case
    ids = interleave(ling, sem, layout)
    assert ids.shape[-1] == ling.shape[-1] + sem.shape[-1]
    back_l, back_s = split(ids, layout)
    assert torch.equal(back_l, ling) and torch.equal(back_s, sem)
    # ... and interleave inverts split on any valid id sequence.
    assert torch.equal(interleave(*split(ids, layout), layout), ids)


@settings(max_examples=100, deadline=None)
@given(codes())
def test_ids_occupy_their_vocabulary_ranges(case):
    layout, ling, sem = case
    ids = interleave(ling, sem, layout).reshape(-1, GROUP_SIZE)
    assert bool(layout.is_audio(ids).all())
    assert ((ids[:, :2] >= layout.offset) & (ids[:, :2] < layout.semantic_offset)).all()
    assert ((ids[:, 2:] >= layout.semantic_offset) & (ids[:, 2:] < layout.vocab_size)).all()


def test_step_audio_layout_numbers():
    ling = torch.tensor([0, 1023])
    sem = torch.tensor([0, 1, 4095])
    assert interleave(ling, sem).tolist() == [65536, 65536 + 1023, 65536 + 1024, 65536 + 1025, 65536 + 1024 + 4095]
    assert STEP_AUDIO_LAYOUT.vocab_size == 65536 + 1024 + 4096


def test_group_order_is_two_linguistic_then_three_semantic():
    layout = AudioTokenLayout(offset=100, n_linguistic=10, n_semantic=10)
    ids = interleave(torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8, 9, 0]), layout)
    assert ids.tolist() == [101, 102, 115, 116, 117, 103, 104, 118, 119, 110]


def test_split_rejects_misplaced_and_partial_ids():
    good = interleave(torch.tensor([1, 2]), torch.tensor([3, 4, 5]))
    swapped = good[[2, 1, 0, 3, 4]]  # a semantic id in a linguistic slot
    with pytest.raises(ValueError, match="linguistic"):
        split(swapped)
    text_id = good.clone()
    text_id[3] = 42  # a text id inside an audio group
    with pytest.raises(ValueError, match="semantic"):
        split(text_id)
    with pytest.raises(ValueError, match="whole number"):
        split(good[:4])


def test_interleave_rejects_bad_codes_and_lengths():
    with pytest.raises(ValueError):
        interleave(torch.tensor([1024, 0]), torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError):
        interleave(torch.tensor([0, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError):
        AudioTokenLayout(offset=-1)


def test_split_whole_groups_keeps_the_tail():
    ids = interleave(torch.arange(4), torch.arange(6))
    ling, sem, rest = split_whole_groups(torch.cat([ids, ids[:3]]))
    assert ling.tolist() == [0, 1, 2, 3] and sem.tolist() == list(range(6))
    assert rest.tolist() == ids[:3].tolist()
