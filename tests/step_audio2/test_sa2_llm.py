"""Step-Audio 2 LLM vs the golden tiny Qwen2 (SPEC.md §7, §12 llm/, tolerances §13): loaded through the product
loader (runtime.step_audio2.checkpoint.load_step_audio2_weights), hidden states and logits within 1e-4, greedy ids
exact with a full recompute, through the KV cache and through runtime.engine.DecodeEngine."""
from __future__ import annotations

import pytest
import torch

from runtime.engine import DecodeEngine
from runtime.layers import attention_mask
from runtime.step_audio2.checkpoint import load_step_audio2_weights
from runtime.step_audio2.config import StepAudio2Config
from runtime.step_audio2.model import StepAudio2ForCausalLM, greedy_generate

ATOL = 1e-4


@pytest.fixture(scope="module")
def io(golden):
    return golden("llm/io")


@pytest.fixture(scope="module")
def model(golden_dir, golden_json) -> StepAudio2ForCausalLM:
    cfg = StepAudio2Config.from_dict(golden_json("llm/config.json"))
    return load_step_audio2_weights(cfg, golden_dir / "llm" / "weights.safetensors", dtype=torch.float32)


def test_flat_qwen2_config_is_a_text_only_step_audio2_llm(model):
    cfg = model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == \
        (158720, 32, 2, 4, 2, 8)
    assert cfg.qkv_bias and not cfg.tie_embeddings and cfg.n_mtp == 0
    assert cfg.token_kind(151687) == "text" and cfg.token_kind(151696) == "semantic"
    assert cfg.token_kind(158256) == "semantic" and cfg.token_kind(158257) == "other"
    assert not model.has_audio and not any(k.startswith(("encoder.", "adapter.")) for k in model.state_dict())
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


@torch.no_grad()
def test_hidden_states_and_logits_match_golden(model, io):
    ids = io["input_ids"]
    pos = torch.arange(ids.shape[1])[None]
    x = model.model.embed_tokens(ids)
    assert (x - io["hidden_states_0"]).abs().max() <= ATOL
    x1 = model.model.layers[0](x, model.rotary(pos, x.dtype), attention_mask(pos, pos), pos, None)
    assert (x1 - io["hidden_states_1"]).abs().max() <= ATOL
    hidden = model(ids)
    assert (hidden - io["final_hidden_normed"]).abs().max() <= ATOL
    logits = model.logits(hidden)[0]
    assert (logits[-1] - io["logits_last"][0]).abs().max() <= ATOL
    assert (logits[io["logits_positions"]] - io["logits_at_positions"]).abs().max() <= ATOL
    assert torch.equal(logits.argmax(-1), io["logits_argmax"][0])
    top = logits.topk(10, dim=-1)
    assert (top.values - io["logits_top10_values"][0]).abs().max() <= ATOL


def test_greedy_ids_full_recompute_and_kv_cache(model, io):
    ids, want = io["input_ids"], io["greedy_ids"][0].tolist()
    embeds = model.model.embed_tokens(ids)
    assert greedy_generate(model, embeds, len(want), use_cache=False) == want
    assert greedy_generate(model, embeds, len(want), use_cache=True) == want


def test_greedy_ids_through_decode_engine(model, io):
    ids, want = io["input_ids"][0], io["greedy_ids"][0].tolist()
    engine = DecodeEngine(model, batch=1, capacity=64)
    engine.reset(0)
    got = [engine.extend(0, ids)]
    while len(got) < len(want):
        new, num = engine.step()
        engine.commit(num.tolist())
        got += new[0, :int(num[0])].tolist()
    assert got[:len(want)] == want
