"""Step-Audio-EditX flow vs the goldens (v1 SPEC §9.1-9.3, §10 flow_editx/, §11: mels atol 1e-4).

The EditX flow loads through the same ``load_flow`` as Step-Audio 2's: its config names a DualCodebookEmbedding.
The CFM noise is the golden ``rand_noise_prefix`` injected (EditX does not seed its buffer).
"""

from __future__ import annotations

import pytest
import torch

from voxcore.strict_load import empty_parameters
from vocoder.step_audio2.flow_loader import build_flow, load_flow
from vocoder.step_audio_v1.editx_flow import DualCodebookEmbedding, editx_inference, fit_prompt_mel, mixed_to_pairs

ATOL = 1e-4


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def flow(golden_dir, golden_json):
    torch.set_num_threads(1)
    return load_flow(golden_dir / "flow_editx" / "weights.safetensors", golden_json("flow_editx/config.json"))


@pytest.fixture(scope="module")
def io(golden):
    return golden("flow_editx/offline")


def test_reshape_cases_from_interleave_json(golden_json):
    for case in golden_json("interleave.json")["editx_reshape_padding"]["cases"]:
        pairs = mixed_to_pairs(torch.tensor(case["flow_input_mixed"]))
        assert pairs.tolist() == case["pairs"], case["len_mod_5"]


def test_golden_pairs_and_concat(io):
    assert torch.equal(mixed_to_pairs(io["prompt_mixed"]), io["prompt_pairs"])
    assert torch.equal(mixed_to_pairs(io["target_mixed"]), io["target_pairs"])  # 37 values: padding exercised
    assert torch.equal(torch.cat([io["prompt_pairs"], io["target_pairs"]], dim=1), io["flow_tokens_concat"])


def test_loader_builds_the_dual_codebook_embedding(flow):
    assert isinstance(flow.input_embedding, DualCodebookEmbedding)
    assert tuple(flow.input_embedding.embedding.weight.shape) == (5121, 32)


def test_prompt_mel_interpolation(io):
    assert max_err(fit_prompt_mel(io["prompt_feat_raw"], io["prompt_pairs"].shape[1]), io["prompt_feat"]) == 0.0


@torch.inference_mode()
def test_embedding_and_encoder(flow, io):
    assert max_err(flow.embed_codes(io["flow_tokens_concat"]), io["input_embedding_out"]) <= ATOL
    h, _ = flow.encode(io["flow_tokens_concat"])
    assert max_err(h, io["encoder_out"]) <= ATOL
    mu = flow.encoder_proj(h).transpose(1, 2)
    assert max_err(mu, io["est_call0_mu"][:1]) <= ATOL
    assert max_err(flow.speaker_projection(io["spk_embedding"]), io["est_call0_spks"][:1]) <= ATOL
    n_prompt = 2 * io["prompt_pairs"].shape[1]
    assert max_err(io["est_call0_cond"][0, :, :n_prompt], io["prompt_feat"][0].T) == 0.0
    assert max_err(io["est_call0_x"][:1], io["rand_noise_prefix"][:, :, :mu.shape[2]]) == 0.0


@torch.inference_mode()
def test_first_estimator_call(flow, io):
    mask = torch.ones(2, 1, io["est_call0_x"].shape[2])
    out = flow.decoder.estimator(io["est_call0_x"], mask, io["est_call0_mu"], io["est_call0_t"],
                                 io["est_call0_spks"], io["est_call0_cond"])
    assert max_err(out, io["est_call0_out"]) <= ATOL


def test_offline_mel(flow, io):
    mel = editx_inference(flow, io["target_mixed"], io["prompt_mixed"], io["prompt_feat_raw"], io["spk_embedding"],
                          noise=io["rand_noise_prefix"])
    assert max_err(mel, io["output_mel"]) <= ATOL


def test_a_single_codebook_flow_is_refused():
    with empty_parameters():
        single = build_flow(None)  # the Step-Audio 2 layout; refused before any tensor is read
    with pytest.raises(TypeError, match="DualCodebookEmbedding"):
        editx_inference(single, torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long),
                        torch.zeros(1, 6, 80), torch.ones(1, 192))
