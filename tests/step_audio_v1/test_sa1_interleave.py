"""The 2:3 interleave against interleave.json (SPEC step_audio_v1 §5): ids, string and mixed values, both ways.

Every example must match exactly: the reference's grouping (G = min(n02 // 2, n06 // 3), leftovers dropped),
the LLM ids 65536 + c / 66560 + c, the ``<audio_N>`` string and the v1 flow's mixed values; and the inverse
of each form gives back the kept codes.
"""

from __future__ import annotations

import pytest
import torch

from tokenizer.step_audio_v1.interleave import (audio_token_string, from_mixed, group_count, interleave_codes,
                                                parse_audio_token_string, split_ids, to_mixed)


@pytest.fixture(scope="module")
def examples(golden_json):
    cases = golden_json("interleave.json")["examples"]
    assert len(cases) == 4
    return cases


def test_codes_to_every_form_exactly(examples):
    for case in examples:
        name, g = case["name"], case["n_groups"]
        assert group_count(case["n_vq02"], case["n_vq06"]) == g, name
        assert len(case["vq02_codes"]) - 2 * g == case["dropped_vq02"], name
        assert len(case["vq06_codes"]) - 3 * g == case["dropped_vq06"], name
        ids = interleave_codes(case["vq02_codes"], case["vq06_codes"])
        assert ids.tolist() == case["llm_ids"], name
        assert audio_token_string(case["vq02_codes"], case["vq06_codes"]) == case["audio_token_string"], name
        assert to_mixed(ids).tolist() == case["flow_v1_input"], name


def test_every_form_back_to_codes_exactly(examples):
    for case in examples:
        name, g = case["name"], case["n_groups"]
        ling, sem = split_ids(case["llm_ids"])
        assert ling.tolist() == case["vq02_codes"][:2 * g], name
        assert sem.tolist() == case["vq06_codes"][:3 * g], name
        assert parse_audio_token_string(case["audio_token_string"]).tolist() == case["llm_ids"], name
        assert from_mixed(case["flow_v1_input"]).tolist() == case["llm_ids"], name


def test_tensor_inputs_and_batches_group_the_same_way(examples):
    case = examples[0]
    ling = torch.tensor([case["vq02_codes"]] * 2)
    sem = torch.tensor([case["vq06_codes"]] * 2)
    ids = interleave_codes(ling, sem)
    assert ids.shape == (2, 5 * case["n_groups"])
    assert ids.tolist() == [case["llm_ids"]] * 2


def test_too_few_codes_for_one_group_give_nothing():
    assert interleave_codes([1], [2, 3, 4]).tolist() == []
    assert interleave_codes([1, 2], [3, 4]).tolist() == []
    assert audio_token_string([1, 2, 3], [4, 5]) == ""


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="linguistic"):
        interleave_codes([1024, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="semantic"):
        interleave_codes([0, 0], [0, 4096, 0])
    with pytest.raises(ValueError, match="whole number"):
        split_ids([65536, 65537, 66560, 66561])
    with pytest.raises(ValueError, match="linguistic position"):
        split_ids([65536, 66560, 66560, 66561, 66562])        # a semantic id in slot a1
    with pytest.raises(ValueError, match="semantic position"):
        split_ids([65536, 65537, 66560, 65538, 66562])        # a linguistic id in slot s1
    with pytest.raises(ValueError, match="other than"):
        parse_audio_token_string("<audio_1> <audio_2>")
    with pytest.raises(ValueError, match="no audio code"):
        parse_audio_token_string("<audio_5120>")
