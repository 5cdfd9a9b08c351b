"""Step-Audio-TTS-3B v1 flow against the golden tensors (golden SPEC step_audio_v1 §8, §10 flow_v1/, §11).

Everything goes through `load_flow_v1`, the loader a user's `flow.pt` goes through. Compared at atol 1e-4 (§11):
the 22.05 kHz prompt mel, speaker projection, encoder_proj rows, length-regulated mu, the first estimator call
(direct and as captured inside inference), and the final mel; lengths exactly.
"""

from __future__ import annotations

import pytest
import torch

from vocoder.step_audio_v1.flow_v1 import FlowV1, FlowV1Config, cosine_time_grid, prompt_mel_22k
from vocoder.step_audio_v1.flow_v1_loader import load_flow_v1
from voxcore.strict_load import CheckpointError, empty_parameters
from voxcore.whisper_mel import slaney_filterbank

ATOL = 1e-4
EST_ARGS = ("x", "mask", "mu", "t", "spks", "cond")


@pytest.fixture(scope="module")
def g(golden):
    return golden("flow_v1/offline")


@pytest.fixture(scope="module")
def config(golden_json):
    return golden_json("flow_v1/config.json")


@pytest.fixture(scope="module")
def flow(golden_dir, config):
    return load_flow_v1(golden_dir / "flow_v1" / "weights.safetensors", config, torch.float32, "cpu")


@pytest.fixture(scope="module")
def run(flow, g):
    """One inference from the golden inputs and injected noise, with every estimator call recorded."""
    calls = []
    hook = flow.decoder.estimator.register_forward_hook(lambda _m, args, out: calls.append((args, out)))
    try:
        mel = flow.inference(g["speech_token"], g["prompt_token"], g["prompt_feat"], g["spk_embedding"],
                             noise=g["cfm_noise_z"])
    finally:
        hook.remove()
    return mel, calls


def close(got: torch.Tensor, want: torch.Tensor, atol: float = ATOL) -> None:
    assert got.shape == want.shape
    err = (got.float() - want.float()).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


def test_prompt_mel_22k_and_its_filterbank(g):
    close(slaney_filterbank(22050, 1024, 80, 8000.0), g["mel_filterbank_22k_80x513"], 1e-7)
    close(prompt_mel_22k(g["prompt_wav_22k"]), g["prompt_feat"])


def test_config_and_lengths(flow, g):
    cfg = flow.config
    assert (cfg.input_size, cfg.num_blocks, cfg.channels, cfg.num_heads, cfg.attention_head_dim) == (32, 2, (32, 32),
                                                                                                   2, 32)
    assert flow.target_frames(g["speech_token"].shape[1]) == 82
    assert g["mu"].shape[1] == g["prompt_feat"].shape[1] + 82
    assert torch.equal(cosine_time_grid(10), g["t_span"])


def test_speaker_encoder_and_length_regulator(flow, g):
    with torch.no_grad():
        close(flow.speaker(g["spk_embedding"]), g["spk_proj"])
        prompt_rows, target_rows = flow.encode(g["speech_token"], g["prompt_token"])
        close(prompt_rows, g["encoder_proj_prompt"])
        close(target_rows, g["encoder_proj_target"])
        mu = flow.length_regulator(prompt_rows, target_rows, g["prompt_feat"].shape[1], 82)
    close(mu, g["mu"])


def test_estimator_first_call_direct(flow, g):
    with torch.no_grad():
        out = flow.decoder.estimator(*(g[f"est_call0_{n}"] for n in EST_ARGS))
    close(out, g["est_call0_out"])


def test_inference_first_estimator_call_and_output_mel(run, g):
    mel, calls = run
    assert len(calls) == 10                         # one batched (CFG) call per Euler step
    args, out = calls[0]
    for name, value in zip(EST_ARGS, args, strict=True):
        close(value, g[f"est_call0_{name}"])
    close(out, g["est_call0_out"])
    assert mel.shape == (1, 80, 82)
    close(mel, g["output_mel"])


def test_noise_is_injectable_or_drawn_from_a_generator(flow, g):
    args = (g["speech_token"][:, :10], g["prompt_token"][:, :5], g["prompt_feat"][:, :8], g["spk_embedding"])
    frames = 8 + flow.target_frames(10)
    noise = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(7))
    drawn = flow.inference(*args, generator=torch.Generator().manual_seed(7))
    assert torch.equal(drawn, flow.inference(*args, noise=noise))
    with pytest.raises(ValueError, match="CFM noise has shape"):
        flow.inference(*args, noise=noise[:, :, 1:])


def test_loader_names_a_misshaped_tensor(golden, config):
    tensors = dict(golden("flow_v1/weights"))
    tensors["encoder.encoders.1.self_attn.pos_bias_u"] = torch.zeros(4, 8)
    with pytest.raises(CheckpointError) as err:
        load_flow_v1(tensors, config, torch.float32, "cpu")
    text = str(err.value)
    assert "mis-shaped tensors (1): encoder.encoders.1.self_attn.pos_bias_u: file (4, 8) vs model (2, 16)" in text
    assert "missing" not in text and "unexpected" not in text


def test_bfloat16_load_runs_close_to_float32(golden_dir, config, run, g):
    flow16 = load_flow_v1(golden_dir / "flow_v1" / "weights.safetensors", config, torch.bfloat16, "cpu")
    assert {p.dtype for p in flow16.parameters()} == {torch.bfloat16}
    mel = flow16.inference(g["speech_token"], g["prompt_token"], g["prompt_feat"], g["spk_embedding"],
                           noise=g["cfm_noise_z"])
    assert mel.dtype == torch.bfloat16 and mel.shape == run[0].shape
    assert (mel.float() - run[0]).abs().mean() < 0.02 * run[0].abs().mean()


def test_full_size_layout_builds_on_meta():
    with empty_parameters():
        model = FlowV1(FlowV1Config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["decoder.estimator.down_blocks.0.1.0.attn1.to_q.weight"] == (512, 256)   # inner 8·64 ≠ C
    assert shapes["decoder.estimator.down_blocks.0.0.block1.block.0.weight"] == (256, 320, 3)
    assert shapes["decoder.estimator.up_blocks.0.2.conv.weight"] == (256, 256, 4)
    assert shapes["encoder.encoders.5.self_attn.pos_bias_u"] == (8, 64)
    assert shapes["length_regulator.model.12.weight"] == (80, 80, 1)
