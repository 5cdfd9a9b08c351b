"""voxcore.strict_load: meta-device build, one error naming every mismatch, dtype cast, derived buffers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from runtime.config import LMConfig
from runtime.model import AudioLM, build_model
from voxcore.strict_load import CheckpointError, empty_parameters, load_strict

CFG = LMConfig(vocab_size=96, text_vocab_size=32, audio_offset=32, linguistic_size=16, semantic_size=48,
               d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=32, n_mtp=0, max_seq_len=64)


def test_meta_build_loads_shards_in_the_target_dtype_and_matches(tmp_path):
    ref = build_model(CFG, seed=3)
    sd = ref.state_dict()
    keys = sorted(sd)
    save_file({k: sd[k].to(torch.bfloat16).contiguous() for k in keys[::2]}, str(tmp_path / "a.safetensors"))
    save_file({k: sd[k].to(torch.bfloat16).contiguous() for k in keys[1::2]}, str(tmp_path / "b.safetensors"))
    with empty_parameters():
        model = AudioLM(CFG)
    assert next(model.parameters()).device.type == "meta"
    load_strict(model, sorted(tmp_path.glob("*.safetensors")), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rotary.cos.device.type == "cpu"          # derived again, not left on meta
    tokens = torch.tensor([[1, 5, 7, 40]])
    want = ref.to(torch.bfloat16).logits(ref.to(torch.bfloat16)(tokens))
    assert torch.equal(model.logits(model(tokens)), want)


def test_one_error_names_missing_unexpected_and_misshaped():
    sd = build_model(CFG, seed=1).state_dict()
    sd.pop("model.norm.weight")
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    sd["encoder.extra.weight"] = torch.zeros(2)
    with empty_parameters():
        model = AudioLM(CFG)
    with pytest.raises(CheckpointError) as err:
        load_strict(model, sd, where="ckpt")
    text = str(err.value)
    assert "model.norm.weight" in text and "encoder.extra.weight" in text
    assert "model.layers.0.mlp.up_proj.weight: file (3, 3) vs model (32, 16)" in text


def test_rename_maps_official_names_and_drops_on_purpose():
    lin = nn.Linear(4, 2)
    sd = {"generator.weight": torch.ones(2, 4), "generator.bias": torch.zeros(2), "scratch": torch.zeros(9)}
    with empty_parameters():
        target = nn.Linear(4, 2)
    load_strict(target, sd, rename=lambda k: None if k == "scratch" else k.replace("generator.", ""))
    assert torch.equal(target.weight, torch.ones(2, 4)) and lin.weight.shape == target.weight.shape


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_strict(nn.Linear(2, 2), [tmp_path / "nope.safetensors"])
