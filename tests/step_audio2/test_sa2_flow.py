"""Step-Audio 2 token2wav flow vs the goldens (SPEC2 §9, §10, §12 flow/, §13: flow mel atol 1e-4).

Everything goes through ``load_flow`` — the loader a user's ``flow.pt`` goes through. The CFM noise is the golden
``rand_noise_prefix`` injected; the prompt mel is the golden ``prompt_mels`` (its computation is tested elsewhere).
"""

from __future__ import annotations

import pytest
import torch

from voxcore.strict_load import CheckpointError, empty_parameters
from vocoder.step_audio2.cfm import cosine_t_span, default_noise
from vocoder.step_audio2.flow_loader import build_flow, load_flow
from vocoder.step_audio2.flow_stream import CodeChunker, setup_stream, stream_chunk

ATOL = 1e-4


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def flow(golden_dir, golden_json):
    torch.set_num_threads(1)
    return load_flow(golden_dir / "flow" / "weights.safetensors", golden_json("flow/config.json"))


@pytest.fixture(scope="module")
def offline(golden):
    return golden("flow/offline")


@pytest.fixture(scope="module")
def stream(golden):
    return golden("flow/stream")


# ------------------------------------------------------------------------------------------------ loader
def test_loader_names_every_missing_and_unexpected_tensor(golden_dir, golden_json):
    from safetensors.torch import load_file
    tensors = load_file(str(golden_dir / "flow" / "weights.safetensors"))
    tensors.pop("encoder.up_layer.conv.weight")
    tensors["decoder.estimator.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_flow(tensors, golden_json("flow/config.json"))
    assert "encoder.up_layer.conv.weight" in str(info.value) and "decoder.estimator.extra" in str(info.value)


def test_loads_an_official_style_torch_pickle(golden_dir, golden_json, offline, tmp_path):
    from safetensors.torch import load_file
    path = tmp_path / "flow.pt"
    torch.save(load_file(str(golden_dir / "flow" / "weights.safetensors")), path)
    model = load_flow(path, golden_json("flow/config.json"))
    assert max_err(model.speaker_projection(offline["spk_emb"]), offline["spk_proj"]) <= ATOL


def test_full_size_defaults_when_no_config():
    with empty_parameters():
        model = build_flow(None)
    assert tuple(model.input_embedding.weight.shape) == (6561, 512)
    assert len(model.encoder.encoders) == 6 and len(model.encoder.up_encoders) == 4
    assert model.encoder.encoders[0].self_attn.n_heads == 8
    assert tuple(model.encoder.encoders[0].feed_forward.w_1.weight.shape) == (2048, 512)
    est = model.decoder.estimator
    assert len(est.blocks) == 16 and est.blocks[0].attn.n_heads == 8 and est.blocks[0].attn.head_dim == 64
    assert tuple(est.in_proj.weight.shape) == (512, 320)
    assert model.decoder.cfg_rate == pytest.approx(0.7) and model.decoder.n_timesteps == 10


# ------------------------------------------------------------------------------------------------ offline
def test_noise_buffer_and_time_grid(flow, offline):
    assert max_err(flow.rand_noise[:, :, :512], offline["rand_noise_prefix"]) == 0.0
    assert max_err(default_noise()[:, :, :512], offline["rand_noise_prefix"]) == 0.0
    assert max_err(cosine_t_span(10), offline["t_span"]) <= 1e-7
    assert max_err(flow.t_span(), offline["t_span"]) <= 1e-7


def test_speaker_projection(flow, offline):
    assert max_err(flow.speaker_projection(offline["spk_emb"]), offline["spk_proj"]) <= ATOL


@torch.inference_mode()
def test_encoder_and_first_estimator_inputs(flow, offline):
    codes = torch.cat([offline["prompt_tokens"], offline["tokens"]], dim=1)
    h, mask = flow.encode(codes)
    assert max_err(h, offline["encoder_out"]) <= ATOL
    assert bool(mask.all())
    mu = flow.encoder_proj(h).transpose(1, 2)
    assert max_err(mu, offline["dit_call0_mu"][:1]) <= ATOL
    assert offline["dit_call0_mu"][1].abs().max() == 0  # the unconditioned row
    n_prompt = int(offline["prompt_mels_lens"][0])
    assert max_err(offline["dit_call0_cond"][0, :, :n_prompt], offline["prompt_mels"][0].T) == 0.0
    assert max_err(offline["dit_call0_x"][:1], offline["rand_noise_prefix"][:, :, :mu.shape[2]]) == 0.0


@torch.inference_mode()
def test_first_estimator_call(flow, offline):
    out = flow.decoder.estimator(offline["dit_call0_x"], offline["dit_call0_mask"], offline["dit_call0_mu"],
                                 offline["dit_call0_t"], offline["dit_call0_spks"], offline["dit_call0_cond"])
    assert max_err(out, offline["dit_call0_out"]) <= ATOL


def test_offline_mel(flow, offline):
    mel = flow.inference(offline["tokens"], offline["prompt_tokens"], offline["prompt_mels"], offline["spk_emb"],
                         noise=offline["rand_noise_prefix"])
    assert max_err(mel, offline["output_mel"]) <= ATOL


def test_offline_rejects_a_prompt_mel_of_the_wrong_length(flow, offline):
    with pytest.raises(ValueError, match="prompt mel"):
        flow.inference(offline["tokens"], offline["prompt_tokens"], offline["prompt_mels"][:, :-1],
                       offline["spk_emb"], noise=offline["rand_noise_prefix"])


# ------------------------------------------------------------------------------------------------ streaming
@pytest.fixture(scope="module")
def voice(flow, offline):
    return setup_stream(flow, offline["prompt_tokens"], offline["prompt_mels"], offline["spk_emb"],
                        noise=offline["rand_noise_prefix"])


def test_chunker_cuts_the_stream_like_the_reference(stream, golden_json):
    meta = golden_json("flow/stream_meta.json")
    chunker = CodeChunker(meta["chunk_size"], meta["pre_lookahead"])
    chunks = chunker.push(stream["stream_tokens"].tolist())
    chunks.append(chunker.finish())
    assert chunker.finish() is None
    assert chunks == [stream[f"chunk{i}_tokens"].tolist() for i in range(4)]
    assert [len(c) for c in chunks] == [c["n_tokens"] for c in meta["chunks"]]


def test_setup_caches(voice, stream, golden_json):
    """Our encoder cache keeps each first-stage layer's K/V once at the code rate; the reference stores it twice
    along time (to share one tensor with the up layers): compare both halves. Conv caches: [lookahead 2 | up 4]."""
    meta = golden_json("flow/stream_meta.json")["setup_cache_shapes"]
    att, cnn = stream["setup_conformer_att_cache"], stream["setup_conformer_cnn_cache"]
    assert list(att.shape) == meta["conformer_att_cache"] and list(cnn.shape) == meta["conformer_cnn_cache"]
    enc = voice.encoder
    assert len(enc.layers) == att.shape[0]
    n_first = 2
    for i, (k, v) in enumerate(enc.layers):
        kv = torch.cat([k, v], dim=-1)
        if i < n_first:
            half = att.shape[3] // 2
            assert max_err(kv, att[i][:, :, :half]) <= ATOL and max_err(kv, att[i][:, :, half:]) <= ATOL
        else:
            assert max_err(kv, att[i]) <= ATOL
    assert max_err(enc.lookahead, cnn[:, :, :2]) <= ATOL
    assert max_err(enc.upsample, cnn[:, :, 2:]) <= ATOL
    # estimator: (steps, blocks, cfg batch, heads, time, 2·head_dim) in the reference's scratch layout
    est = meta["estimator_att_cache"]
    assert voice.estimator_cache_len == est[4] == voice.prompt_frames
    for step in voice.estimator:
        for cache in step:
            assert cache.k.shape == (est[2], est[3], est[4], est[5] // 2) == cache.v.shape
            assert cache.conv1_tail.shape == cache.conv2_tail.shape == (est[2], 64, 2)


def test_stream_chunks(flow, voice, stream, offline, golden_json):
    meta = golden_json("flow/stream_meta.json")
    state = voice.fork()
    offsets, lengths = [], []
    for i, info in enumerate(meta["chunks"]):
        offsets.append(state.noise_offset)
        mel = stream_chunk(flow, state, stream[f"chunk{i}_tokens"], last_chunk=info["last_chunk"],
                           noise=offline["rand_noise_prefix"])
        assert mel.shape[2] == info["mel_frames"]
        assert max_err(mel, stream[f"chunk{i}_mel"]) <= ATOL, f"chunk {i}"
        lengths.append(state.estimator_cache_len)
        assert lengths[-1] == info["cache_shapes_after"]["estimator_att_cache"][4]
        assert 2 * state.encoder.length == info["cache_shapes_after"]["conformer_att_cache"][3]
    assert lengths == [74, 124, 174, 154]
    assert offsets == [24, 74, 124, 124]  # the trim after chunk 2 made chunk 3 reuse noise from frame 124
    assert voice.estimator_cache_len == 24  # the voice's own state is untouched by its fork


def test_trim_keeps_the_newest_chunk_head_and_the_oldest_material(flow, voice, stream, offline):
    """Newest-first storage: after 3 chunks the cache is [c2, c1, c0, prompt]; the trim keeps c2[:24] + the last 100."""
    state = voice.fork()
    prompt_k = voice.estimator[3][1].k
    for i in range(3):
        stream_chunk(flow, state, stream[f"chunk{i}_tokens"], noise=offline["rand_noise_prefix"])
    before = state.estimator[3][1].k
    state.trim_estimator_cache()
    after = state.estimator[3][1].k
    assert after.shape[2] == 124
    assert torch.equal(after[:, :, :24], before[:, :, :24])
    assert torch.equal(after[:, :, 24:], before[:, :, -100:])
    assert torch.equal(after[:, :, -24:], prompt_k)


def test_the_default_noise_buffer_reproduces_the_reference_stream(flow, offline, stream):
    state = setup_stream(flow, offline["prompt_tokens"], offline["prompt_mels"], offline["spk_emb"])
    assert max_err(stream_chunk(flow, state, stream["chunk0_tokens"]), stream["chunk0_mel"]) <= ATOL


def test_sessions_do_not_share_state(flow, voice, stream, offline):
    a, b = voice.fork(), voice.fork()
    mel_a = stream_chunk(flow, a, stream["chunk0_tokens"], noise=offline["rand_noise_prefix"])
    mel_a1 = stream_chunk(flow, a, stream["chunk1_tokens"], noise=offline["rand_noise_prefix"])
    mel_b = stream_chunk(flow, b, stream["chunk0_tokens"], noise=offline["rand_noise_prefix"])
    assert torch.equal(mel_a, mel_b)
    assert max_err(mel_a1, stream["chunk1_mel"]) <= ATOL
    assert a.estimator_cache_len == 124 and b.estimator_cache_len == 74
