"""Checkpoint directories (config.json + safetensors, Qwen2 names), MTP weight files, presets."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from rt_helpers import SMALL, tiny
from safetensors.torch import load_file, save_file

from runtime.checkpoint import CheckpointError, load_checkpoint, load_mtp, save_checkpoint, save_mtp
from runtime.config import LMConfig
from runtime.presets import build_tiny, load_model, resolve


def _all_logits(model, tokens):
    with torch.no_grad():
        h = model(tokens)
        return [model.logits(h)] + [model.mtp_logits(k, g) for k, g in
                                    enumerate(model.mtp_offline(h, tokens, model.config.n_mtp))]


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_gives_identical_logits(tmp_path, tied):
    model = tiny(dtype=torch.float32, tie_embeddings=tied)
    save_checkpoint(model, tmp_path / "ckpt")
    names = set(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.layers.1.mlp.down_proj.weight" in names
    assert "model.layers.0.self_attn.q_proj.bias" in names          # Qwen2: bias on q/k/v
    assert "mtp.2.eh_proj.weight" in names and "mtp.0.block.self_attn.k_proj.weight" in names
    assert ("lm_head.weight" in names) != tied                     # a tied head is not stored
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["num_hidden_layers"] == 2 and cfg["num_nextn_predict_layers"] == 3
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    for a, b in zip(_all_logits(model, tokens), _all_logits(loaded, tokens)):
        assert torch.equal(a, b)
    if tied:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_sharded_checkpoint_loads(tmp_path):
    model = tiny(dtype=torch.float32)
    save_checkpoint(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[::2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[1::2]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    tokens = torch.randint(0, model.config.vocab_size, (1, 7))
    assert torch.equal(_all_logits(load_checkpoint(tmp_path), tokens)[0], _all_logits(model, tokens)[0])


def test_missing_tensor_is_named(tmp_path):
    save_checkpoint(tiny(dtype=torch.float32), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): model\.layers\.1\.self_attn\.v_proj\.weight"):
        load_checkpoint(tmp_path)


def test_wrong_shape_and_unexpected_tensor_are_named(tmp_path):
    save_checkpoint(tiny(dtype=torch.float32), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.norm.weight"] = torch.ones(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight: file \(3,\)"):
        load_checkpoint(tmp_path)
    tensors["model.norm.weight"] = torch.ones(64)
    tensors["model.layers.9.mlp.up_proj.weight"] = torch.ones(1)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \(1\): model\.layers\.9"):
        load_checkpoint(tmp_path)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(LMConfig(**SMALL, vocab_size=64).to_hf_dict()))
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_checkpoint(tmp_path)


def test_mtp_weights_file_round_trip(tmp_path):
    trained, fresh = tiny(dtype=torch.float32, seed=1), tiny(dtype=torch.float32, seed=2)
    tokens = torch.randint(0, trained.config.vocab_size, (1, 8))
    fresh.load_state_dict({k: v for k, v in trained.state_dict().items() if not k.startswith("mtp.")},
                          strict=False)
    assert not torch.equal(_all_logits(fresh, tokens)[1], _all_logits(trained, tokens)[1])
    save_mtp(trained, tmp_path / "mtp.safetensors")
    assert all(k.startswith("mtp.") for k in load_file(str(tmp_path / "mtp.safetensors")))
    load_mtp(fresh, tmp_path / "mtp.safetensors")
    for a, b in zip(_all_logits(fresh, tokens), _all_logits(trained, tokens)):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_mtp(tiny(dtype=torch.float32, n_mtp=4), tmp_path / "mtp.safetensors")


def test_config_round_trip_and_plain_qwen2_config():
    cfg = LMConfig(**SMALL, vocab_size=70, d_model=48, n_heads=6, n_kv_heads=2, n_mtp=2, qkv_bias=False)
    assert LMConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg
    qwen = {"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "intermediate_size": 4864, "tie_word_embeddings": True}
    text_only = LMConfig.from_hf_dict(qwen)
    assert (text_only.head_dim, text_only.n_mtp, text_only.audio_end) == (64, 0, 151936)
    step_audio = LMConfig()   # defaults follow Step-Audio's id layout
    assert step_audio.linguistic_id(5) == 65536 + 5 and step_audio.semantic_id(7) == 65536 + 1024 + 7
    assert step_audio.token_kind(65536 + 1024 + 7) == "semantic"
    with pytest.raises(ValueError, match="n_kv_heads"):
        LMConfig(n_heads=6, n_kv_heads=4)
    with pytest.raises(ValueError, match="raise vocab_size"):
        LMConfig(vocab_size=1000)


def test_tiny_preset_is_reproducible_and_registry_is_lazy():
    a, b = build_tiny(), resolve("tiny")()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert load_model("tiny").config == a.config
    with pytest.raises(KeyError, match="unknown model"):
        resolve("nope")
    code = "import sys, runtime.presets; print('runtime.model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
