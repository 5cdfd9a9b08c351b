"""Step1ForCausalLM against the step1_llm goldens (SPEC step_audio_v1 §6, §10, §11), through load_step1.

Checks: the sqrt-ALiBi slopes and bias exactly; embeddings, the first layer's output, the final normed hidden
states and the logits within 1e-4; argmax / top-10 ids exactly; 16 greedy steps exactly, both by re-running
the whole sequence and through our DecodeEngine (KV cache written and read by position, two slots of
different lengths stepping together); the loader's one error naming every bad tensor; a bf16 round trip
through the official layout (single file and shards).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from runtime.engine import DecodeEngine
from runtime.step1 import (TINY_STEP1, Step1ForCausalLM, alibi_slopes, load_step1, save_step1, sqrt_alibi_bias,
                           write_tiny_step1)
from voxcore.strict_load import CheckpointError

ATOL = 1e-4
GREEDY_STEPS = 16


@pytest.fixture(scope="module")
def io(golden):
    return golden("step1_llm/io")


@pytest.fixture(scope="module")
def weights_file(golden_dir):
    return golden_dir / "step1_llm" / "weights.safetensors"


@pytest.fixture(scope="module")
def model(weights_file):
    torch.set_num_threads(1)
    return load_step1([weights_file], dtype=torch.float32)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _greedy_without_cache(model: Step1ForCausalLM, ids: torch.Tensor, steps: int):
    """Re-run the whole sequence for every new token: the reference's no-cache path."""
    out, logits = [], []
    with torch.no_grad():
        for _ in range(steps):
            last = model.logits(model(ids)[:, -1])                       # [1, V]
            out.append(last.argmax(-1))
            logits.append(last[0])
            ids = torch.cat([ids, out[-1][:, None]], dim=1)
    return torch.stack(out, dim=1), torch.stack(logits)


# ---- ALiBi ---------------------------------------------------------------------------------------------
def test_slopes_and_bias_are_exact(io):
    assert torch.equal(alibi_slopes(48), io["alibi_slopes_48"])
    assert torch.equal(alibi_slopes(6), io["alibi_slopes_6"])
    pos = torch.arange(8)
    bias = sqrt_alibi_bias(alibi_slopes(6), pos[None], pos, torch.float32)[0]   # [6, 8, 8]
    assert torch.equal(bias, io["alibi_bias_6heads_L8"])


def test_slopes_stay_float32_when_the_weights_are_cast(model):
    cast = Step1ForCausalLM(TINY_STEP1.replace(vocab_size=64)).to(torch.bfloat16)
    assert cast.alibi_slopes.dtype == torch.float32
    assert torch.equal(cast.alibi_slopes, alibi_slopes(6))
    assert model.alibi_slopes.dtype == torch.float32


# ---- one forward -----------------------------------------------------------------------------------------
def test_hidden_states_and_logits_match(model, io):
    seen = {}
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: seen.__setitem__("h0", o)),
             model.model.layers[0].register_forward_hook(lambda m, i, o: seen.__setitem__("h1", o))]
    try:
        with torch.no_grad():
            hidden = model(io["input_ids"])
            logits = model.logits(hidden)                                 # [1, 50, V]
    finally:
        for h in hooks:
            h.remove()
    errors = {
        "hidden_states_0": _max_err(seen["h0"], io["hidden_states_0"]),
        "hidden_states_1": _max_err(seen["h1"], io["hidden_states_1"]),
        "final_hidden_normed": _max_err(hidden, io["final_hidden_normed"]),
        "logits_last": _max_err(logits[:, -1], io["logits_last"]),
        "logits_at_positions": _max_err(logits[0, io["logits_positions"]], io["logits_at_positions"]),
    }
    top = logits.topk(10, dim=-1)
    errors["logits_top10_values"] = _max_err(top.values, io["logits_top10_values"])
    assert all(e <= ATOL for e in errors.values()), errors
    assert torch.equal(logits.argmax(-1), io["logits_argmax"])
    assert torch.equal(top.indices, io["logits_top10_ids"])


# ---- greedy decoding -------------------------------------------------------------------------------------
def test_greedy_without_cache(model, io):
    ids, logits = _greedy_without_cache(model, io["input_ids"], GREEDY_STEPS)
    assert torch.equal(ids, io["greedy_ids"])
    top = logits.topk(10, dim=-1)
    assert torch.equal(top.indices, io["greedy_step_top10_ids"][0])
    assert _max_err(top.values, io["greedy_step_top10_values"][0]) <= ATOL


def test_greedy_through_the_decode_engine_kv_cache(model, io):
    """Slot 0: the golden prompt, prefilled in chunks of 16 (queries at offset positions over the cache).
    Slot 1: a 31-token prefix of it, so the two slots step at different positions in one batch."""
    prompt = io["input_ids"][0]
    short = prompt[:31]
    short_ids, _ = _greedy_without_cache(model, short[None], GREEDY_STEPS)
    engine = DecodeEngine(model, batch=2, capacity=96, n_draft=0)
    engine.reset(0)
    engine.reset(1)
    got = [[engine.extend(0, prompt, chunk=16)]]
    prefill = engine.last_hidden                                        # this extend's hidden states [1, 50, D]
    assert _max_err(prefill, io["final_hidden_normed"]) <= ATOL
    assert _max_err(model.logits(prefill[0, io["logits_positions"]]), io["logits_at_positions"]) <= ATOL
    step_logits = [model.logits(prefill[0, -1])]
    got.append([engine.extend(1, short)])
    for _ in range(GREEDY_STEPS - 1):
        new, num_new = engine.step()
        engine.commit(num_new.tolist())
        assert num_new.tolist() == [1, 1]
        got[0].append(new[0, 0].item())
        got[1].append(new[1, 0].item())
        step_logits.append(model.logits(engine.last_hidden[0, 0]))
    assert got[0] == io["greedy_ids"][0].tolist()
    assert got[1] == short_ids[0].tolist()
    top = torch.stack(step_logits).topk(10, dim=-1)
    assert torch.equal(top.indices, io["greedy_step_top10_ids"][0])
    assert _max_err(top.values, io["greedy_step_top10_values"][0]) <= ATOL


# ---- loader ----------------------------------------------------------------------------------------------
def test_loader_names_every_bad_tensor_in_one_error(weights_file, golden_dir, tmp_path):
    tensors = load_file(str(weights_file))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(9, 24)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((golden_dir / "step1_llm" / "config.json").read_text())
    with pytest.raises(CheckpointError) as err:
        load_step1(tmp_path, dtype=torch.float32)
    message = str(err.value)
    assert "missing tensors (1): model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected tensors (1): model.layers.0.self_attn.rotary_emb.inv_freq" in message
    assert "model.layers.0.self_attn.k_proj.weight: file (9, 24) vs model (8, 24)" in message


def test_loader_needs_the_config_beside_the_weights(weights_file, tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_step1(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_step1([tmp_path / "absent.safetensors"])


def test_bf16_round_trip_in_the_official_layout(weights_file, golden_dir, tmp_path):
    bf16 = load_step1([weights_file])                                     # default dtype: bfloat16
    assert next(bf16.parameters()).dtype == torch.bfloat16
    golden_config = json.loads((golden_dir / "step1_llm" / "config.json").read_text())
    golden_tensors = load_file(str(weights_file))
    for shard_bytes, files in ((None, ["model.safetensors"]), (1_000_000, None)):
        out = save_step1(bf16, tmp_path / f"shards_{shard_bytes}", max_shard_bytes=shard_bytes)
        written = json.loads((out / "config.json").read_text())
        assert written == {**golden_config, "torch_dtype": "bfloat16"}
        names = sorted(p.name for p in out.glob("*.safetensors"))
        if files:
            assert names == files
        else:
            index = json.loads((out / "model.safetensors.index.json").read_text())
            assert len(names) > 1 and sorted(set(index["weight_map"].values())) == names
            assert set(index["weight_map"]) == set(golden_tensors)
        stored = {}
        for name in names:
            with safe_open(str(out / name), framework="pt") as fh:
                stored.update({k: fh.get_tensor(k) for k in fh.keys()})
        assert set(stored) == set(golden_tensors)
        for key, t in stored.items():
            assert t.dtype == torch.bfloat16 and torch.equal(t, golden_tensors[key].to(torch.bfloat16)), key
        again = load_step1(out)
        for (k1, a), (k2, b) in zip(bf16.state_dict().items(), again.state_dict().items(), strict=True):
            assert k1 == k2 and torch.equal(a, b), k1


def test_bf16_logits_stay_near_float32(weights_file, io):
    bf16 = load_step1([weights_file], dtype=torch.bfloat16)
    with torch.no_grad():
        logits = bf16.logits(bf16(io["input_ids"]))[:, -1]
    # Rounding of weights and activations to 8 mantissa bits: ~0.03 on logits of magnitude ~5.
    assert _max_err(logits, io["logits_last"]) < 0.1


# ---- tiny checkpoints and tying --------------------------------------------------------------------------
def test_tiny_checkpoint_is_reproducible_and_loads(tmp_path):
    small = TINY_STEP1.replace(vocab_size=128)
    a = load_step1(write_tiny_step1(tmp_path / "a", seed=3, config=small), dtype=torch.float32)
    b = load_step1(write_tiny_step1(tmp_path / "b", seed=3, config=small), dtype=torch.float32)
    c = load_step1(write_tiny_step1(tmp_path / "c", seed=4, config=small), dtype=torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    tokens = torch.tensor([[1, 4, 70, 3]])
    with torch.no_grad():
        assert a.logits(a(tokens)).shape == (1, 4, 128)


def test_tied_checkpoint_has_no_lm_head_and_uses_the_embedding(tmp_path):
    tied = TINY_STEP1.replace(vocab_size=128, tie_word_embeddings=True)
    folder = write_tiny_step1(tmp_path / "tied", seed=5, config=tied)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        assert "lm_head.weight" not in fh.keys()
    model = load_step1(folder, dtype=torch.float32)
    hidden = torch.randn(2, 24)
    assert torch.equal(model.logits(hidden), hidden @ model.model.embed_tokens.weight.T)
    # A config without tie_word_embeddings is settled by the file: no lm_head stored -> tied.
    config = json.loads((folder / "config.json").read_text())
    del config["tie_word_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load_step1(folder).config.tie_word_embeddings is True
