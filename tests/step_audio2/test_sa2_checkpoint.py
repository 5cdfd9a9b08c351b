"""Step-Audio 2 checkpoint directories in the official layout (SPEC.md §2, §7, §14): a tiny random one written
shard by shard, loaded back in bf16 through load_step_audio2 (index or plain shards), one error naming every
mismatch, the nested config, the special tokens read from the tokenizer files (a missing one named), TA4 and
output parsing."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime.step_audio2.checkpoint import (INDEX_NAME, TINY_SPECIAL_IDS, checkpoint_files, load_step_audio2,
                                            read_config, save_step_audio2, write_text_tokenizer,
                                            write_tiny_step_audio2)
from runtime.step_audio2.config import StepAudio2Config, StepAudio2ConfigError
from runtime.step_audio2.prompt import speech_chat_prompt, tts_prompt
from runtime.step_audio2.tokens import (SpecialTokens, TextTokenizer, TokenizerFilesError, interleave_ta4,
                                        parse_output)
from voxcore.strict_load import CheckpointError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_step_audio2(tmp_path_factory.mktemp("sa2") / "tiny", seed=7, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def special(tiny):
    return SpecialTokens.from_directory(tiny)


def _stored(directory):
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_tiny_layout_loads_in_bf16_and_equals_the_files(tiny):
    files = checkpoint_files(tiny)
    index = json.loads((tiny / INDEX_NAME).read_text())
    assert len(files) > 1 and {f.name for f in files} == set(index["weight_map"].values())
    assert all(f.name.startswith("model-") and f.name.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    model = load_step_audio2(tiny, dtype=torch.bfloat16)
    sd = model.state_dict()
    stored = _stored(tiny)
    assert set(sd) == set(stored) == set(index["weight_map"])
    assert {k.split(".")[0] for k in sd} == {"model", "lm_head", "encoder", "adapter"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())
    assert all(torch.equal(sd[k], stored[k]) for k in sd)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in stored.values())


def test_save_round_trip_and_plain_shards_without_index(tiny, tmp_path):
    model = load_step_audio2(tiny)
    out = save_step_audio2(model, tmp_path / "copy", max_shard_bytes=1 << 20)
    raw = json.loads((out / "config.json").read_text())
    assert set(raw) >= {"text_config", "audio_encoder_config"} and raw["torch_dtype"] == "bfloat16"
    assert read_config(out) == model.step_config
    (out / INDEX_NAME).unlink()
    again = load_step_audio2(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@torch.no_grad()
def test_bf16_model_runs_an_audio_prompt(tiny, special):
    model = load_step_audio2(tiny)
    tok = TextTokenizer(tiny, special)
    wave = torch.sin(torch.arange(16000) * 0.05) * 0.3
    prompt = speech_chat_prompt(wave, tok, system="hi")
    embeds = model.embed_prompt(prompt.ids, prompt.mels, prompt.mel_lens)
    assert embeds.dtype == torch.bfloat16 and prompt.num_audio_tokens == [13]
    assert torch.isfinite(model.logits(model(None, inputs_embeds=embeds))).all()
    assert prompt.ids[0, -1] == special.tts_start


def test_one_error_names_missing_unexpected_and_misshaped(tiny, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    index = json.loads((bad / INDEX_NAME).read_text())
    shard = index["weight_map"]["model.norm.weight"]
    tensors = load_file(str(bad / shard))
    tensors["model.norm.weight"] = torch.ones(33, dtype=torch.bfloat16)
    tensors["encoder.extra.weight"] = torch.ones(2, dtype=torch.bfloat16)
    dropped = next(k for k in tensors if k != "model.norm.weight" and k != "encoder.extra.weight")
    del tensors[dropped]
    save_file(tensors, str(bad / shard))
    index["weight_map"]["encoder.extra.weight"] = shard
    del index["weight_map"][dropped]
    (bad / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as err:
        load_step_audio2(bad)
    msg = str(err.value)
    assert dropped in msg and "encoder.extra.weight" in msg and "model.norm.weight: file (33,) vs model (32,)" in msg
    assert "missing" in msg and "unexpected" in msg and "mis-shaped" in msg


def test_index_and_shards_must_agree(tiny, tmp_path):
    index = json.loads((tiny / INDEX_NAME).read_text())
    (tmp_path / "config.json").write_text((tiny / "config.json").read_text())
    for f in checkpoint_files(tiny):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    index["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors"
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00009-of-00009.safetensors"):
        load_step_audio2(tmp_path)


def test_config_errors_name_the_missing_keys(tiny):
    raw = json.loads((tiny / "config.json").read_text())
    del raw["text_config"]["hidden_size"], raw["audio_encoder_config"]["n_audio_head"]
    with pytest.raises(StepAudio2ConfigError, match="missing keys hidden_size"):
        StepAudio2Config.from_dict(raw)
    raw = json.loads((tiny / "config.json").read_text())
    del raw["audio_encoder_config"]["n_audio_head"]
    with pytest.raises(StepAudio2ConfigError, match="audio_encoder_config: missing keys n_audio_head"):
        StepAudio2Config.from_dict(raw)
    raw = json.loads((tiny / "config.json").read_text())
    raw["audio_encoder_config"]["llm_dim"] = 48
    with pytest.raises(StepAudio2ConfigError, match="llm_dim=48"):
        StepAudio2Config.from_dict(raw)
    raw = json.loads((tiny / "config.json").read_text())
    raw["text_config"]["num_nextn_predict_layers"] = 2
    assert StepAudio2Config.from_dict(raw).lm.n_mtp == 2


def test_special_tokens_read_back_from_the_tokenizer_files(special):
    assert special.bot == TINY_SPECIAL_IDS["<|BOT|>"] and special.eot == TINY_SPECIAL_IDS["<|EOT|>"]
    assert (special.audio_start, special.audio_end, special.audio_patch) == (151688, 151689, 151690)
    assert (special.tts_start, special.tts_end, special.tts_pad) == (151693, 151694, 151695)
    assert (special.audio_first, special.audio_pad) == (151696, 158257)


def test_missing_or_wrong_token_is_named(tmp_path):
    write_text_tokenizer(tmp_path / "a", omit=("<tts_pad>",))
    with pytest.raises(TokenizerFilesError, match=r"tokenizer_config\.json.*no added token <tts_pad>"):
        SpecialTokens.from_directory(tmp_path / "a")
    write_text_tokenizer(tmp_path / "b", special_ids={"<audio_start>": 151691})
    with pytest.raises(TokenizerFilesError, match="<audio_start> is 151691, the reference uses 151688"):
        SpecialTokens.from_directory(tmp_path / "b")
    with pytest.raises(TokenizerFilesError, match="neither"):
        SpecialTokens.from_directory(tmp_path)


def test_text_tokenizer_segments_and_text_only_decode(tiny, special):
    tok = TextTokenizer(tiny, special)
    assert tok.encode("<|BOT|>human\n")[0] == special.bot
    ids = tok.encode_segments(["ab", "c", [special.audio_start, special.audio_id(5)]])
    assert ids == tok.encode("ab") + tok.encode("c") + [151688, 151701]
    assert tok.decode(ids + [special.tts_start]) == "abc"
    prompt = tts_prompt("hello", tok)
    assert prompt.mels is None and prompt.ids[0, -1] == special.tts_start
    assert tok.decode(prompt.ids[0].tolist()) == "以自然的语速读出下面的文字。\nhello"


def test_ta4_interleave_and_output_parsing(special):
    sp = special
    seq = interleave_ta4([10, 11], [0, 1, 2, 3, 4, 5, 6, 7, 8], sp)          # k = max(ceil(9/4), 2) = 3
    a = [sp.audio_id(c) for c in range(9)] + [sp.audio_pad] * 3
    assert seq == ([sp.tts_start, 10] + a[0:4] + [11] + a[4:8] + [sp.tts_pad] + a[8:12] + [sp.tts_end, 10, 11])
    parsed = parse_output([5, 6] + seq + [sp.eot], sp)
    assert parsed.audio_codes == list(range(9))
    assert parsed.text_ids == [5, 6, 10, 11, 10, 11] and parsed.spoken_text_ids == [10, 11]
    assert parsed.speech_started and parsed.speech_ended
