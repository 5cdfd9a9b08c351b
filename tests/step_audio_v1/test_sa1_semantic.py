"""S3 tokenizer v1 (Step-Audio v1 semantic stream, tokenizer/s3) against semantic_v1/ (SPEC §4, §10, §11).

Every tensor of semantic_v1/io.safetensors is compared, through load_s3_tokenizer(version="v1"): the 128×201
filterbank and 1500×64 sinusoid table (derived, not loaded), the log-mels from the (already §2-preprocessed) wavs,
the hidden states before the VQ (atol 1e-4) and the codes (exact). Also: §4's 30 s waveform pieces, the ONNX path,
and the loader's errors.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tokenizer.s3 import S3TokenizerV1, load_s3_tokenizer
from voxcore.strict_load import CheckpointError
from voxcore.whisper_mel import log_mel, slaney_filterbank

ATOL = 1e-4  # SPEC §11: hidden/encoder outputs and mels
HAS_ONNX = importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def io(golden):
    return golden("semantic_v1/io")


@pytest.fixture(scope="module")
def weights_path(golden_dir):
    return golden_dir / "semantic_v1" / "weights.safetensors"


@pytest.fixture(scope="module")
def config_path(golden_dir):
    return golden_dir / "semantic_v1" / "config.json"


@pytest.fixture(scope="module")
def model(weights_path):
    tok = load_s3_tokenizer(weights_path, version="v1")  # config.json beside the weights: W 64, 2 heads, 2 blocks
    assert isinstance(tok, S3TokenizerV1)
    return tok


def test_filterbank_and_sinusoid_table(model, io):
    torch.testing.assert_close(slaney_filterbank(16000, 400, 128), io["mel_filterbank_128x201"], atol=1e-6, rtol=0)
    table = model.encoder.positional_embedding
    assert table.shape == io["positional_embedding_1500x64"].shape
    torch.testing.assert_close(table, io["positional_embedding_1500x64"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("clip, frames, tokens", [("a", 162, 41), ("b", 237, 60)])
def test_mel_hidden_and_tokens(model, io, clip, frames, tokens):
    mel = log_mel(io[f"wav_{clip}"], n_mels=128, pad=0)
    assert mel.shape == io[f"mel_{clip}"].shape == (128, frames)
    torch.testing.assert_close(mel, io[f"mel_{clip}"], atol=ATOL, rtol=0)
    with torch.no_grad():
        hidden, lens = model.encoder(io[f"mel_{clip}"][None], torch.tensor([frames]))
    assert lens.tolist() == [tokens] and hidden.shape[1:] == io[f"encoder_hidden_{clip}"].shape
    torch.testing.assert_close(hidden[0], io[f"encoder_hidden_{clip}"], atol=ATOL, rtol=0)
    codes, code_lens = model.tokenize_mel(io[f"mel_{clip}"][None], torch.tensor([frames]))
    assert code_lens.tolist() == [tokens]
    assert codes[0].tolist() == io[f"tokens_{clip}"].tolist()


def test_batched_mels_and_waves_give_each_clip_its_own_tokens(model, io):
    batch = torch.zeros(2, 128, 237)
    batch[0, :, :162], batch[1] = io["mel_a"], io["mel_b"]
    codes, lens = model.tokenize_mel(batch, torch.tensor([162, 237]))
    assert lens.tolist() == [41, 60]
    assert codes[0, :41].tolist() == io["tokens_a"].tolist() and codes[1].tolist() == io["tokens_b"].tolist()
    assert model.tokenize([io["wav_a"].numpy(), io["wav_b"]]) == [io["tokens_a"].tolist(), io["tokens_b"].tolist()]


def test_waveform_over_30s_is_cut_into_30s_pieces(model, io):
    """SPEC §4: 480000-sample pieces tokenised independently and concatenated; a piece under 480 samples is dropped."""
    noise = 0.1 * torch.randn(480_000, generator=torch.Generator().manual_seed(1))
    wave = torch.cat([noise, io["wav_b"], torch.zeros(479_000), io["wav_a"][:479]])
    pieces = [noise, torch.cat([io["wav_b"], torch.zeros(479_000)])[:480_000]]
    pieces.append(torch.cat([io["wav_b"], torch.zeros(479_000), io["wav_a"][:479]])[480_000:])
    assert pieces[2].numel() == 37_920 + 479_000 + 479 - 480_000
    expected = [t for p in pieces for t in model.tokenize([p])[0]]
    got = model.tokenize([wave])[0]
    assert got == expected and len(got) == 750 + 750 + (pieces[2].numel() // 160 - 1) // 4 + 1
    short_tail = torch.cat([noise, io["wav_a"][:479]])
    assert model.tokenize([short_tail]) == model.tokenize([noise])


def test_loader_errors(weights_path, config_path, model):
    from safetensors.torch import load_file

    state = load_file(str(weights_path))
    state["quantizer._codebook.embed"] = torch.zeros(1024, 64)
    state["encoder.blocks.0.attn.fsmn_block.weight"] = torch.zeros(64, 1, 31)  # v1 has no FSMN
    with pytest.raises(CheckpointError) as err:
        load_s3_tokenizer(state, version="v1", config=config_path)
    message = str(err.value)
    assert "quantizer._codebook.embed: file (1024, 64) vs model (4096, 64)" in message
    assert "unexpected tensors (1): encoder.blocks.0.attn.fsmn_block.weight" in message
    # a stored sinusoid table (the reference's onnx-to-torch output carries one) is accepted only if it is ours
    good = load_file(str(weights_path))
    good["encoder.positional_embedding"] = model.encoder.positional_embedding.clone()
    assert load_s3_tokenizer(good, version="v1", config=config_path).tokenize([torch.zeros(0)]) == [[]]
    good["encoder.positional_embedding"] = torch.zeros(1500, 64)
    with pytest.raises(CheckpointError, match="encoder.positional_embedding"):
        load_s3_tokenizer(good, version="v1", config=config_path)


@pytest.mark.skipif(not HAS_ONNX, reason="torch.onnx.export needs the `onnx` package, not installed "
                                         "(pip install onnx==1.23.2, the test extra)")
def test_onnx_file_runs_behind_the_same_interface(tmp_path, model, io):
    """Exported with the layout s3tokenizer's ONNX test reads from speech_tokenizer_v1.onnx (codes [1, 1, T']) and an
    int64 length input, to exercise the runner's reshaping and length cast."""

    class Exported(torch.nn.Module):
        def __init__(self, inner: S3TokenizerV1) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
            return self.inner(feats, feats_length)[0][:, None, :].to(torch.int32)

    path = tmp_path / "speech_tokenizer_v1.onnx"
    torch.onnx.export(Exported(model), (io["mel_a"][None], torch.tensor([162])), str(path), dynamo=False,
                      input_names=["feats", "feats_length"], output_names=["indices"],
                      dynamic_axes={"feats": {0: "B", 2: "T"}, "feats_length": {0: "B"}, "indices": {0: "B", 2: "t"}})
    onnx_tok = load_s3_tokenizer(path, version="v1")
    assert onnx_tok.tokenize([io["wav_a"], io["wav_b"]]) == [io["tokens_a"].tolist(), io["tokens_b"].tolist()]
