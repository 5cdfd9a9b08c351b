"""Step-Audio v1 linguistic stream (vq02) against the reference goldens (SPEC step_audio_v1 §2, §3, §10, §11).

Every model here comes through `load_linguistic_tokenizer`, fed the official file kinds: the encoder weights file,
an ``am.mvn`` text and a ``.npy`` centroid table written from the golden vectors, and the FunASR-style config.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenizer.step_audio_v1.frontend import LinguisticFrontend
from tokenizer.step_audio_v1.linguistic import (
    LinguisticTokenizer,
    energy_norm,
    load_linguistic_tokenizer,
    preprocess_16k,
    read_am_mvn,
    trim_bounds,
)
from voxcore.strict_load import CheckpointError

CLIPS = ("a", "b", "c")
ENC_ATOL = 1e-4  # SPEC §11: encoder outputs
FBANK_ATOL = 1e-3  # SPEC §11: Kaldi log-fbank
FEATURE_ATOL = 1e-4  # LFR + CMVN rows (values up to ~7)


def write_am_mvn(path, shift, rescale):
    """A Kaldi-nnet am.mvn as FunASR ships it; repr() of each float32 value reads back exactly."""
    def vec(t):
        return " ".join(repr(float(v)) for v in t)
    n = shift.numel()
    path.write_text(f"<Nnet>\n<Splice> {n} {n}\n[ 0 ]\n<AddShift> {n} {n}\n<LearnRateCoef> 0 [ {vec(shift)} ]\n"
                    f"<Rescale> {n} {n}\n<LearnRateCoef> 0 [ {vec(rescale)} ]\n</Nnet>\n")
    return path


@pytest.fixture(scope="module")
def ling(golden):
    return golden("linguistic/io")


@pytest.fixture(scope="module")
def meta(golden_json):
    return golden_json("linguistic/chunks_meta.json")


@pytest.fixture(scope="module")
def official_files(golden_dir, ling, tmp_path_factory):
    root = tmp_path_factory.mktemp("vq02")
    np.save(root / "linguistic_tokenizer.npy", ling["kmeans_centroids"].numpy())
    return {"encoder_weights": golden_dir / "linguistic" / "weights.safetensors",
            "cmvn": write_am_mvn(root / "am.mvn", ling["cmvn_addshift"], ling["cmvn_rescale"]),
            "kmeans": root / "linguistic_tokenizer.npy",
            "config": golden_dir / "linguistic" / "config.json"}


@pytest.fixture(scope="module")
def tok(official_files) -> LinguisticTokenizer:
    return load_linguistic_tokenizer(**official_files)


def chunk_feats(ling, clip):
    return [ling[f"chunk{i}_feats_{clip}"] for i in range(100) if f"chunk{i}_feats_{clip}" in ling]


def chunk_windows(ling, clip):
    return [ling[f"chunk{i}_enc_out_{clip}"] for i in range(100) if f"chunk{i}_enc_out_{clip}" in ling]


def maxabs(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


# --- preprocessing and front end -----------------------------------------------------------------------------------

def test_am_mvn_round_trip(official_files, ling):
    shift, rescale = read_am_mvn(official_files["cmvn"])
    assert torch.equal(shift, ling["cmvn_addshift"]) and torch.equal(rescale, ling["cmvn_rescale"])


@pytest.mark.parametrize("clip", ["a", "b"])
def test_preprocess_matches_golden(ling, golden_json, clip):
    if clip == "a":
        assert list(trim_bounds(energy_norm(ling["wav_a_raw"]))) == golden_json("linguistic/config.json")["trim_index_a"]
    out = preprocess_16k(ling[f"wav_{clip}_raw"])
    assert maxabs(out, ling[f"wav_{clip}"]) <= 1e-7


def test_mel_banks_match_golden(tok, ling):
    assert maxabs(tok.frontend.mel_banks, ling["kaldi_mel_banks_80x257"]) < 2e-5
    assert torch.all(tok.frontend.mel_banks[:, -1] == 0)


@pytest.mark.parametrize("clip", CLIPS)
def test_fbank_matches_golden(tok, ling, clip):
    wave = ling[f"wav_{clip}"]
    fbank = tok.frontend.fbank(wave)
    assert fbank.shape[0] == (wave.numel() - 400) // 160 + 1
    assert maxabs(fbank, ling[f"fbank_all_{clip}"]) < FBANK_ATOL


@pytest.mark.parametrize("clip", CLIPS)
def test_lfr_cmvn_matches_golden(tok, ling, clip):
    expected = torch.cat(chunk_feats(ling, clip))
    fbank = ling[f"fbank_all_{clip}"]
    assert expected.shape[0] == math.ceil(fbank.shape[0] / 6)
    assert maxabs(tok.frontend.apply_cmvn(tok.frontend.lfr(fbank)), expected) < FEATURE_ATOL  # from golden fbank
    assert maxabs(tok.frontend(ling[f"wav_{clip}"]), expected) < FEATURE_ATOL  # from the waveform


@pytest.mark.parametrize("clip", CLIPS)
def test_chunked_frontend_equals_offline(tok, ling, clip):
    wave = ling[f"wav_{clip}"]
    stream, pieces = tok.frontend.stream(), []
    for start in range(0, wave.numel(), 3840):
        piece = wave[start:start + 3840]
        pieces.append(stream.accept(piece, is_final=piece.numel() < 3840))
    assert [p.shape[0] for p in pieces if p.shape[0]] == [c.shape[0] for c in chunk_feats(ling, clip)]
    assert maxabs(torch.cat(pieces), tok.frontend(wave)) <= 1e-6


# --- encoder and codes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("clip", CLIPS)
def test_encoder_calls_match_golden(tok, ling, meta, clip):
    feats = chunk_feats(ling, clip)
    calls = tok.encode_calls(torch.cat(feats), [f.shape[0] for f in feats])
    assert [(c.window.shape[0], c.features.shape[0]) for c in calls] == [
        (m["encoder_output_frames"], m["kept_output_frames"]) for m in meta[clip]["chunks"]]
    for call, window in zip(calls, chunk_windows(ling, clip), strict=True):
        assert maxabs(call.window, window) < ENC_ATOL
    assert maxabs(torch.cat([c.kept for c in calls]), ling[f"enc_out_{clip}"][0]) < ENC_ATOL
    assert torch.equal(torch.cat([c.codes for c in calls]), ling[f"codes_{clip}"])


@pytest.mark.parametrize("clip", CLIPS)
def test_codes_from_golden_encoder_output(tok, ling, clip):
    assert torch.equal(tok.quantizer(ling[f"enc_out_{clip}"][0]), ling[f"codes_{clip}"])
    assert ling[f"codes_{clip}"].max() < 1024


@pytest.mark.parametrize("clip", CLIPS)
def test_tokenize_end_to_end(tok, ling, meta, clip):
    wave = ling[f"wav_{clip}"]
    assert tok.rows_per_call(wave.numel()) == [m["encoder_input_frames"] for m in meta[clip]["chunks"]]
    calls = tok.encode(wave)
    assert maxabs(torch.cat([c.kept for c in calls]), ling[f"enc_out_{clip}"][0]) < ENC_ATOL
    codes = tok.tokenize(wave)
    assert codes.dtype == torch.long and codes.numel() == meta[clip]["num_codes"]
    assert torch.equal(codes, ling[f"codes_{clip}"])


# --- issue 21 acceptance 2: streaming == offline ---------------------------------------------------------------------

def feed_in_pieces(tok, wave, sizes, keep_calls=False):
    stream, out, start, i = tok.stream(keep_calls=keep_calls), [], 0, 0
    while start < wave.numel():
        out.append(stream.feed(wave[start:start + sizes[i % len(sizes)]]))
        start += sizes[i % len(sizes)]
        i += 1
    out.append(stream.finish())
    return torch.cat(out), stream


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("sizes", [[3840], [1], [1001, 3841, 160, 7], [25920 * 2]], ids=["slices", "1", "mixed", "all"])
def test_streaming_equals_offline(tok, ling, clip, sizes):
    wave = ling[f"wav_{clip}"][:4000] if sizes == [1] else ling[f"wav_{clip}"]  # sample by sample: keep it short
    codes, stream = feed_in_pieces(tok, wave, sizes, keep_calls=True)
    offline = tok.encode(wave)
    assert torch.equal(codes, tok.tokenize(wave))
    assert len(stream.calls) == len(offline)
    for streamed, ref in zip(stream.calls, offline, strict=True):
        assert maxabs(streamed.features, ref.features) <= 1e-6
        assert maxabs(streamed.window, ref.window) <= 1e-6
    if wave.numel() == ling[f"wav_{clip}"].numel():
        assert torch.equal(codes, ling[f"codes_{clip}"])
        for streamed, window in zip(stream.calls, chunk_windows(ling, clip), strict=True):
            assert maxabs(streamed.window, window) < ENC_ATOL


@pytest.mark.parametrize("length", [0, 399, 400, 560, 3840, 3879, 3880, 3890, 7680 + 300, 11520])
def test_streaming_equals_offline_at_edges(tok, length):
    wave = torch.randn(length, generator=torch.Generator().manual_seed(length)) * 0.1
    offline = tok.tokenize(wave)
    frames = 0 if length < 400 else (length - 400) // 160 + 1
    assert offline.numel() == math.ceil(frames / 6)
    assert sum(tok.rows_per_call(length)) == offline.numel()
    codes, _ = feed_in_pieces(tok, wave, [1234])
    assert torch.equal(codes, offline)


def test_finished_stream_refuses_more(tok):
    stream = tok.stream()
    stream.feed(torch.zeros(5000))
    stream.finish()
    with pytest.raises(RuntimeError):
        stream.feed(torch.zeros(10))


# --- the loader ----------------------------------------------------------------------------------------------------

def test_loader_reads_a_torch_paraformer_checkpoint(official_files, ling, tmp_path):
    """A FunASR model.pt holds the whole Paraformer: the decoder and predictor tensors are dropped."""
    from safetensors.torch import load_file
    state = load_file(str(official_files["encoder_weights"]))
    state["decoder.embed.0.weight"] = torch.zeros(3, 4)
    state["predictor.cif_output.bias"] = torch.zeros(1)
    torch.save(state, tmp_path / "model.pt")
    tok = load_linguistic_tokenizer(**{**official_files, "encoder_weights": tmp_path / "model.pt"})
    assert torch.equal(tok.tokenize(ling["wav_c"]), ling["codes_c"])


def test_loader_names_every_mismatch(official_files, tmp_path):
    from safetensors.torch import load_file
    state = load_file(str(official_files["encoder_weights"]))
    del state["encoder.encoders.1.self_attn.fsmn_block.weight"]
    state["encoder.after_norm.bias"] = torch.zeros(31)
    state["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_linguistic_tokenizer(**{**official_files, "encoder_weights": state})
    for name in ("encoders.1.self_attn.fsmn_block.weight", "after_norm.bias", "extra.weight"):
        assert name in str(err.value)


def test_loader_checks_centroids_and_cmvn(official_files, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1024, 31), dtype=np.float32))
    with pytest.raises(CheckpointError, match="centroids"):
        load_linguistic_tokenizer(**{**official_files, "kmeans": tmp_path / "bad.npy"})
    (tmp_path / "am.mvn").write_text("<Nnet>\n<AddShift> 560 560\n<LearnRateCoef> 0 [ 1 2 ]\n</Nnet>\n")
    with pytest.raises(CheckpointError, match="Rescale"):
        load_linguistic_tokenizer(**{**official_files, "cmvn": tmp_path / "am.mvn"})
    with pytest.raises(CheckpointError, match="cmvn_shift"):
        load_linguistic_tokenizer(**{**official_files, "cmvn": (torch.zeros(559), torch.ones(560))})


def test_frontend_derives_its_tables_after_a_meta_build():
    with torch.device("meta"):
        fe = LinguisticFrontend()
    fe.derive_buffers()
    assert fe.mel_banks.device.type == "cpu" and fe.window.shape == (400,)
