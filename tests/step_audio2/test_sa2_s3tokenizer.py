"""S3TokenizerV2 (tokenizer/s3) against the s3tokenizer_v2/ goldens (SPEC §3, §8, §12, §13), through load_s3_tokenizer.

Golden model: width 128, 2 heads of 64, 2 layers. Hidden and FSQ tanh are compared only on rows inside each clip's
length (SPEC §13: padded rows are computed on padding); tokens and lengths must be exact. Also: the official-ONNX path
(our tiny model exported with torch.onnx), the 30 s windows of long clips (§8.8), and the loader's one error.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tokenizer.s3 import S3TokenizerV2, load_s3_tokenizer
from tokenizer.s3.blocks import WINDOW_FRAMES
from voxcore.strict_load import CheckpointError
from voxcore.whisper_mel import log_mel

ATOL = 1e-4  # SPEC §13: S3 hidden
HAS_ONNX = importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def io(golden):
    return golden("s3tokenizer_v2/io")


@pytest.fixture(scope="module")
def weights_path(golden_dir):
    return golden_dir / "s3tokenizer_v2" / "weights.safetensors"


@pytest.fixture(scope="module")
def model(weights_path):
    tok = load_s3_tokenizer(weights_path, version="v2")  # config.json beside the weights gives the tiny sizes
    assert isinstance(tok, S3TokenizerV2)
    return tok


def _valid_rows_error(ours: torch.Tensor, ref: torch.Tensor, lens: torch.Tensor) -> float:
    return max(float((ours[i, :n] - ref[i, :n]).abs().max()) for i, n in enumerate(lens.tolist()))


@pytest.mark.parametrize("clip", ["a", "b"])
def test_log_mel_from_the_wav_matches_golden(io, clip):
    mel = log_mel(io[f"wav_{clip}"], n_mels=128, pad=0)
    assert mel.shape == io[f"mel_{clip}"].shape
    torch.testing.assert_close(mel, io[f"mel_{clip}"], atol=ATOL, rtol=0)


def test_mel_batch_is_the_zero_padded_clips(io):
    batch = io["mel_batch"]
    assert io["mel_lens"].tolist() == [300, 205]
    assert torch.equal(batch[0], io["mel_a"]) and torch.equal(batch[1, :, :205], io["mel_b"])
    assert not batch[1, :, 205:].any()


def test_encoder_hidden_and_fsq_tanh_match_on_valid_rows(model, io):
    with torch.no_grad():
        hidden, lens = model.encoder(io["mel_batch"], io["mel_lens"].long())
        tanh = model.quantizer.tanh_projection(hidden)
    assert lens.tolist() == io["encoder_lens"].tolist() == [75, 52]
    assert hidden.shape == io["encoder_hidden"].shape and tanh.shape == io["fsq_tanh"].shape
    assert _valid_rows_error(hidden, io["encoder_hidden"], lens) <= ATOL
    assert _valid_rows_error(tanh, io["fsq_tanh"], lens) <= ATOL


def test_tokens_and_lengths_are_exact(model, io):
    codes, lens = model.tokenize_mel(io["mel_batch"], io["mel_lens"])
    assert lens.tolist() == io["token_lens"].tolist()
    for i, n in enumerate(lens.tolist()):
        assert codes[i, :n].tolist() == io["tokens"][i, :n].tolist()
    assert len(set(codes[0].tolist())) == 22  # SPEC §12: clip a uses 22 distinct codes
    assert int(codes.min()) >= 0 and int(codes.max()) < 6561


def test_tokenize_waves_single_and_batched(model, io):
    single = model.tokenize([io["wav_a"].numpy()])
    assert single == [io["tokens_single_a"][0].tolist()]
    both = model.tokenize([io["wav_a"], io["wav_b"]])
    assert both[0] == single[0]
    assert both[1] == io["tokens"][1, :int(io["token_lens"][1])].tolist()


def test_pt_checkpoint_loads_the_same(tmp_path, weights_path, golden_dir, io):
    from safetensors.torch import load_file

    pt = tmp_path / "s3.pt"
    torch.save(load_file(str(weights_path)), pt)
    tok = load_s3_tokenizer(pt, version="v2", config=golden_dir / "s3tokenizer_v2" / "config.json")
    assert tok.tokenize([io["wav_a"]]) == [io["tokens_single_a"][0].tolist()]


def test_loader_names_a_mis_shaped_tensor(weights_path, golden_dir):
    from safetensors.torch import load_file

    state = load_file(str(weights_path))
    state["encoder.blocks.1.attn.fsmn_block.weight"] = torch.zeros(128, 1, 15)
    del state["quantizer._codebook.project_down.bias"]
    state["encoder.blocks.0.attn.key.bias"] = torch.zeros(128)
    with pytest.raises(CheckpointError) as err:
        load_s3_tokenizer(state, version="v2", config=golden_dir / "s3tokenizer_v2" / "config.json")
    message = str(err.value)
    assert "encoder.blocks.1.attn.fsmn_block.weight: file (128, 1, 15) vs model (128, 1, 31)" in message
    assert "quantizer._codebook.project_down.bias" in message and "encoder.blocks.0.attn.key.bias" in message


def test_long_clip_goes_through_30s_windows_with_4s_overlap(model):
    """SPEC §8.8: windows start every 26 s; 2 s (50 tokens) are dropped on each inner side."""
    frames = 5400  # windows [0, 3000), [2600, 5400), [5200, 5400)
    mel = torch.randn(1, 128, frames, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    codes, lens = model.tokenize_mel(mel, torch.tensor([frames]))
    windows = [mel[:, :, 0:3000], mel[:, :, 2600:5400], mel[:, :, 5200:5400]]
    alone = [model.tokenize_mel(w, torch.tensor([w.shape[-1]]))[0][0].tolist() for w in windows]
    assert [len(a) for a in alone] == [750, 700, 50]
    expected = alone[0][:-50] + alone[1][50:-50] + alone[2][50:]
    assert int(lens[0]) == len(expected) == 700 + 600 + 0
    assert codes[0, :int(lens[0])].tolist() == expected
    # a clip of exactly 30 s is one window, and a long clip batched with a short one leaves the short one alone
    short = mel[:, :, :WINDOW_FRAMES]
    batch = torch.zeros(2, 128, frames)
    batch[0], batch[1, :, :WINDOW_FRAMES] = mel[0], short[0]
    mixed, mixed_lens = model.tokenize_mel(batch, torch.tensor([frames, WINDOW_FRAMES]))
    assert mixed_lens.tolist() == [len(expected), 750]
    assert mixed[1, :750].tolist() == alone[0]


def test_no_frame_no_token(model, io):
    assert model.tokenize([torch.zeros(100), io["wav_a"]]) == [[], io["tokens_single_a"][0].tolist()]


@pytest.mark.skipif(not HAS_ONNX, reason="torch.onnx.export needs the `onnx` package, not installed "
                                         "(pip install onnx==1.23.2, the test extra)")
def test_onnx_file_runs_behind_the_same_interface(tmp_path, model, io):
    """Our tiny model exported the way the release ships it (inputs feats [B,128,T] float, feats_length [B] int32;
    codes [B, T']), then loaded through load_s3_tokenizer(.onnx): the same tokens."""

    class Exported(torch.nn.Module):
        def __init__(self, inner: S3TokenizerV2) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
            return self.inner(feats, feats_length.long())[0]

    path = tmp_path / "speech_tokenizer_v2_25hz.onnx"
    torch.onnx.export(Exported(model), (io["mel_a"][None], torch.tensor([300], dtype=torch.int32)), str(path),
                      dynamo=False, input_names=["feats", "feats_length"], output_names=["indices"],
                      dynamic_axes={"feats": {0: "B", 2: "T"}, "feats_length": {0: "B"}, "indices": {0: "B", 1: "t"}})
    onnx_tok = load_s3_tokenizer(path, version="v2")
    codes, lens = onnx_tok.tokenize_mel(io["mel_batch"], io["mel_lens"])
    assert lens.tolist() == io["token_lens"].tolist()
    for i, n in enumerate(lens.tolist()):
        assert codes[i, :n].tolist() == io["tokens"][i, :n].tolist()
    assert onnx_tok.tokenize([io["wav_a"]]) == [io["tokens_single_a"][0].tolist()]
