"""Streaming vocoder (tiny random weights, causal generator): streamed == offline, causal, slots.

Tolerance: streamed vs offline audio within 1e-5 absolute and mel within 1e-4 (float32; the same
ops run on different chunk shapes, so only summation order differs: observed ~1e-8 on audio whose
peak is ~3e-2). The noise is a pure function of (seed, frame), so there is no sampling slack.
"""

from __future__ import annotations

import pytest
import torch

from voxcore.interleave import interleave
from vocoder.flow import FlowConfig, TokenToMel
from vocoder.model import StreamingVocoder

SAMPLES_PER_GROUP = 1920
ATOL_AUDIO = 1e-5
ATOL_MEL = 1e-4
GROUPS = 13  # odd, and not a multiple of 2 or 7


@pytest.fixture(scope="module")
def voc() -> StreamingVocoder:
    return StreamingVocoder.tiny(seed=0)


def stream(voc, ling, sem, chunk, seeds):
    state = voc.init_state(ling.shape[0], seeds)
    groups = ling.shape[1] // 2
    parts = [voc(ling[:, 2 * i:2 * (i + chunk)], sem[:, 3 * i:3 * (i + chunk)], state)
             for i in range(0, groups, chunk)]
    return torch.cat(parts + [voc.flush(state)], dim=-1)


@pytest.mark.parametrize("chunk", [1, 2, 7])
def test_streamed_audio_equals_offline(voc, tokens, chunk):
    ling, sem = tokens(2, GROUPS)
    seeds = torch.tensor([11, 12])
    offline = voc(ling, sem, seeds=seeds)
    assert offline.shape == (2, GROUPS * SAMPLES_PER_GROUP)
    assert offline.abs().max() > 1e-3  # not trivially silent
    torch.testing.assert_close(stream(voc, ling, sem, chunk, seeds), offline, atol=ATOL_AUDIO, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2, 7])
def test_streamed_mel_equals_offline(tokens, chunk):
    flow = TokenToMel(FlowConfig.tiny()).eval()
    ling, sem = tokens(1, GROUPS, seed=3)
    offline = flow(ling, sem, seeds=5)
    assert offline.shape == (1, 80, 12 * GROUPS)
    state = flow.init_state(1, 5)
    parts = [flow(ling[:, 2 * i:2 * (i + chunk)], sem[:, 3 * i:3 * (i + chunk)], state)
             for i in range(0, GROUPS, chunk)]
    torch.testing.assert_close(torch.cat(parts, -1), offline, atol=ATOL_MEL, rtol=0)


def test_future_tokens_never_change_earlier_audio(voc, tokens):
    ling, sem = tokens(1, GROUPS)
    ling2, sem2 = ling.clone(), sem.clone()
    k = 6
    ling2[:, 2 * k:] = (ling2[:, 2 * k:] + 1) % 1024
    sem2[:, 3 * k:] = (sem2[:, 3 * k:] + 1) % 4096
    a, b = voc(ling, sem, seeds=1), voc(ling2, sem2, seeds=1)
    cut = k * SAMPLES_PER_GROUP
    torch.testing.assert_close(a[:, :cut], b[:, :cut], atol=ATOL_AUDIO, rtol=0)
    assert (a[:, cut:] - b[:, cut:]).abs().max() > 1e-4  # the changed future is audible


def test_noise_seed_is_per_session(voc, tokens):
    ling, sem = tokens(1, 4)
    a, a_again, b = voc(ling, sem, seeds=1), voc(ling, sem, seeds=1), voc(ling, sem, seeds=2)
    assert torch.equal(a, a_again)
    assert (a - b).abs().max() > 1e-4
    # In one batch, each slot draws its own seed's noise: same tokens, different seeds, different audio;
    # and each slot equals a run of that seed alone.
    both = voc(ling.repeat(2, 1), sem.repeat(2, 1), seeds=torch.tensor([1, 2]))
    torch.testing.assert_close(both[0:1], a, atol=ATOL_AUDIO, rtol=0)
    torch.testing.assert_close(both[1:2], b, atol=ATOL_AUDIO, rtol=0)


def test_slots_are_independent_and_reset_alone(voc, tokens):
    ling, sem = tokens(2, 10, seed=4)
    state = voc.init_state(2, torch.tensor([7, 8]))
    first = voc(ling[:, :8], sem[:, :12], state)  # 4 groups each
    # Slot 1 ends its response; a new one starts there with seed 99, slot 0 carries on.
    state.reset(torch.tensor([False, True]), seeds=99)
    new_ling, new_sem = tokens(1, 6, seed=5)
    second = voc(torch.cat([ling[:1, 8:], new_ling]), torch.cat([sem[:1, 12:], new_sem]), state)
    whole0 = voc(ling[:1], sem[:1], seeds=7)
    torch.testing.assert_close(torch.cat([first[:1], second[:1]], -1), whole0, atol=ATOL_AUDIO, rtol=0)
    torch.testing.assert_close(second[1:], voc(new_ling, new_sem, seeds=99), atol=ATOL_AUDIO, rtol=0)


def test_ids_path_matches_codes_path(voc, tokens):
    ling, sem = tokens(2, 3)
    torch.testing.assert_close(voc.forward_ids(interleave(ling, sem), seeds=3), voc(ling, sem, seeds=3))


def test_checkpoint_round_trip(voc, tokens, tmp_path):
    voc.save_pretrained(tmp_path / "voc")
    assert (tmp_path / "voc" / "flow" / "config.json").exists()
    loaded = StreamingVocoder.from_pretrained(tmp_path / "voc")
    assert loaded.flow.cfg == voc.flow.cfg and loaded.base_generator.cfg == voc.base_generator.cfg
    ling, sem = tokens(1, 3)
    assert torch.equal(loaded(ling, sem, seeds=4), voc(ling, sem, seeds=4))


def test_tiny_is_reproducible_and_sizes_are_checked(tokens):
    ling, sem = tokens(1, 2)
    assert torch.equal(StreamingVocoder.tiny(3)(ling, sem), StreamingVocoder.tiny(3)(ling, sem))
    assert not torch.equal(StreamingVocoder.tiny(3)(ling, sem), StreamingVocoder.tiny(4)(ling, sem))
    with pytest.raises(ValueError, match="whole 120 ms groups"):
        StreamingVocoder.tiny()(ling[:, :3], sem)
