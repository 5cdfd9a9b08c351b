"""Step-Audio 2 audio path vs the goldens (SPEC.md §3-§6, §12 encoder_adapter/, tolerances §13).

Mel from the waveform (voxcore.whisper_mel, pad 479), encoder and adapter rows (valid rows only: rows past a clip's
length are computed on padding), lengths and placeholder counts, the prompt builder's mel batch, and the multimodal
prompt: embedding replacement, logits and greedy ids, all through the product loader."""
from __future__ import annotations

import pytest
import torch

from runtime.step_audio2.checkpoint import load_step_audio2_weights, write_text_tokenizer
from runtime.step_audio2.config import StepAudio2Config
from runtime.step_audio2.encoder import adapter_output_lengths, encoder_output_lengths, num_audio_tokens
from runtime.step_audio2.model import greedy_generate
from runtime.step_audio2.prompt import asr_prompt
from runtime.step_audio2.tokens import TextTokenizer
from voxcore.whisper_mel import ENCODER_PAD, log_mel

ATOL = 1e-4


@pytest.fixture(scope="module")
def io(golden):
    return golden("encoder_adapter/io")


@pytest.fixture(scope="module")
def mm(golden):
    return golden("encoder_adapter/multimodal")


@pytest.fixture(scope="module")
def model(golden_dir, golden_json):
    """The golden LLM (llm/, whose width the adapter maps to) with the golden encoder + adapter: two weight files
    read as the shards of one checkpoint."""
    cfg = StepAudio2Config.from_dict({"text_config": golden_json("llm/config.json"),
                                      "audio_encoder_config": golden_json("encoder_adapter/config.json")})
    files = [golden_dir / "llm" / "weights.safetensors", golden_dir / "encoder_adapter" / "weights.safetensors"]
    return load_step_audio2_weights(cfg, files, dtype=torch.float32)


def test_mel_from_wav(io):
    for name in ("a", "b"):
        mel = log_mel(io[f"wav_{name}"], n_mels=128, pad=ENCODER_PAD)
        assert mel.shape == io[f"mel_{name}"].shape
        assert (mel - io[f"mel_{name}"]).abs().max() <= ATOL


def test_length_formulas(io):
    frames = torch.tensor([io["mel_a"].shape[-1], io["mel_b"].shape[-1]])      # 302, 207
    assert torch.equal(frames - 2, io["mel_lens"].long())
    assert torch.equal(encoder_output_lengths(io["mel_lens"].long()), io["encoder_lens"])
    assert torch.equal(adapter_output_lengths(io["encoder_lens"]), io["adapter_lens"])
    assert torch.equal(num_audio_tokens(frames), io["num_audio_tokens"])


@torch.no_grad()
def test_encoder_and_adapter_valid_rows(model, io):
    hidden, enc_lens = model.encoder(io["mel_batch"], io["mel_lens"].long())
    rows, ad_lens = model.adapter(hidden, enc_lens)
    assert torch.equal(enc_lens, io["encoder_lens"]) and torch.equal(ad_lens, io["adapter_lens"])
    assert hidden.shape == io["encoder_out"].shape and rows.shape == io["adapter_out"].shape
    for b in range(2):
        n_e, n_a = int(enc_lens[b]), int(ad_lens[b])
        assert (hidden[b, :n_e] - io["encoder_out"][b, :n_e]).abs().max() <= ATOL
        assert (rows[b, :n_a] - io["adapter_out"][b, :n_a]).abs().max() <= ATOL
    single, lens = model.encode_audio(io["mel_a"][None], io["mel_lens"][:1])
    assert (single - io["adapter_out_single_a"]).abs().max() <= ATOL
    enc_single, _ = model.encoder(io["mel_a"][None], io["mel_lens"][:1].long())
    assert (enc_single - io["encoder_out_single_a"]).abs().max() <= ATOL


def test_prompt_builder_mel_batch_and_placeholders(io, tmp_path):
    tok = TextTokenizer(write_text_tokenizer(tmp_path))
    sp = tok.special
    prompt = asr_prompt(io["wav_a"], tok)
    assert prompt.num_audio_tokens == [38]
    assert (prompt.mels[0] - io["mel_a"]).abs().max() <= ATOL
    assert torch.equal(prompt.mel_lens, io["mel_lens"][:1].long())
    ids = prompt.ids[0].tolist()
    start = ids.index(sp.audio_start)
    assert ids[start + 1:start + 39] == [sp.audio_patch] * 38 and ids[start + 39] == sp.audio_end
    assert tok.decode(ids[:start]).startswith("<|BOT|>system\n")
    assert ids[-1] == tok.encode("\n")[-1] and ids.count(sp.bot) == 3 and ids.count(sp.eot) == 2


@torch.no_grad()
def test_multimodal_prompt_embeds_logits_and_greedy(model, io, mm, golden_json):
    meta = golden_json("encoder_adapter/multimodal_meta.json")
    ids = mm["input_ids"]
    starts = (ids[0] == meta["audio_start"]).nonzero()[:, 0]
    assert torch.equal(starts, mm["audio_start_positions"])
    embeds = model.embed_prompt(ids, io["mel_batch"], io["mel_lens"])
    assert (embeds - mm["inputs_embeds"]).abs().max() <= ATOL
    hidden = model(None, inputs_embeds=embeds)
    assert (hidden - mm["final_hidden_normed"]).abs().max() <= ATOL
    logits = model.logits(hidden)[0]
    assert (logits[-1] - mm["logits_last"][0]).abs().max() <= ATOL
    assert torch.equal(logits.argmax(-1), mm["logits_argmax"][0])
    want = mm["greedy_ids"][0].tolist()
    assert greedy_generate(model, embeds, len(want), use_cache=False) == want
    assert greedy_generate(model, embeds, len(want), use_cache=True) == want


def test_embed_prompt_rejects_clip_count_mismatch(model, io, mm):
    with pytest.raises(ValueError, match="2 <audio_start>.*1 audio clips"):
        model.embed_prompt(mm["input_ids"], io["mel_batch"][:1], io["mel_lens"][:1])
