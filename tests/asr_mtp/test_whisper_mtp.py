"""Torch Whisper on the embedded weights (issue 4, point 2).

(a) the CTranslate2 -> torch conversion loads, and plain greedy decoding of the torch model gives the same
    transcripts as faster-whisper's greedy decoding on the real-speech test set;
(b) multi-token decoding (MTP drafts verified in one decoder pass) gives exactly plain greedy's tokens on
    the whole test set for k = 1, 2, 3, with untrained heads and with heads trained for a few steps;
plus the verify/rollback mechanics with drafters that are always right and always wrong.

The audio is encoded once per file (module fixture); every decoder reuses those cross keys/values.
"""
from __future__ import annotations

import pytest
import torch

from asr.torch_whisper.decode import GreedyOptions, TorchWhisperASR, greedy_decode
from asr.torch_whisper.mtp import (MTPDrafter, WhisperMTP, default_draft_ids, freeze_for_inference,
                                   init_from_decoder, mtp_decode, mtp_decoder)
from bench.common import read, transcripts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def asr() -> TorchWhisperASR:
    torch.set_num_threads(2)
    return TorchWhisperASR("whisper-base")


@pytest.fixture(scope="module")
def corpus(asr):
    """[(name, audio, cross K/V per window, plain greedy transcription)] for every test recording."""
    rows = []
    for path, _ in transcripts():
        audio = read(path)
        encoded = [asr.encode(w) for w in asr.windows(audio)]
        rows.append((path.name, audio, encoded, asr.transcribe(audio, encoded=encoded)))
    return rows


def _tokens(transcription) -> list[list[int]]:
    return [w.tokens for w in transcription.windows]


def test_converted_weights_load_and_match_the_ct2_file(asr):
    from asr.torch_whisper.convert import converted_path, read_ct2
    from voxcore.embedded_whisper import whisper_model_dir

    dims = asr.model.dims
    assert (dims.n_audio_layer, dims.n_text_layer, dims.n_text_state, dims.n_vocab) == (6, 6, 512, 51865)
    assert converted_path("whisper-base").name.startswith("whisper-base-d01c3014881c9c6f")
    spec, variables, aliases = read_ct2(whisper_model_dir("whisper-base") / "model.bin")
    assert spec == "WhisperSpec" and aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    # Spot checks against the raw file (float16 there, float32 here: exact upcast).
    block = asr.model.decoder.blocks[3]
    assert torch.equal(block.cross.q.bias, variables["decoder/layer_3/attention/linear_0/bias"].float())
    assert torch.equal(asr.model.encoder.conv2.weight, variables["encoder/conv2/weight"].float())
    assert torch.equal(asr.model.decoder.token_embedding.weight, variables["decoder/embeddings/weight"].float())
    # Whisper's key projections have no bias; CTranslate2 stores zeros in the fused q|k|v bias.
    qkv_bias = variables["decoder/layer_0/self_attention/linear_0/bias"]
    assert qkv_bias[512:1024].abs().max() == 0


def test_plain_greedy_matches_faster_whisper(asr, corpus):
    from faster_whisper import WhisperModel

    from voxcore.embedded_whisper import whisper_model_dir

    # float32: the embedded weights are float16, so both sides compute with the same numbers (the service's
    # int8 changes a few words; bench/whisper_mtp.py reports that separately).
    fw = WhisperModel(str(whisper_model_dir("whisper-base")), device="cpu", compute_type="float32", cpu_threads=2)
    mismatches = []
    for name, audio, _, ours in corpus:
        segments, _ = fw.transcribe(audio, language="en", beam_size=1, temperature=0.0,
                                    condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
        theirs = " ".join(s.text.strip() for s in segments)
        if ours.text != theirs:
            mismatches.append((name, ours.text, theirs))
    print(f"\nplain greedy torch == faster-whisper (float32) on {len(corpus) - len(mismatches)}/{len(corpus)} files")
    assert not mismatches, mismatches
    assert all(t.text for *_, t in corpus)


def test_packed_rows_do_not_depend_on_the_batch(asr):
    """What makes a k+1-token verify pass compute plain decoding's numbers: oneDNN rows are independent."""
    from asr.torch_whisper import packed

    if not packed.available():
        pytest.skip("oneDNN is not available in this torch build")
    head = asr.model.decoder.head
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(0))
    assert torch.equal(head(x[:1]), head(x)[:1])
    fc1 = asr.model.decoder.blocks[2].fc1
    assert torch.equal(fc1(x[None, :1]), fc1(x[None])[:, :1])


def _check_identical(asr, corpus, mtp, ks=(1, 2, 3)) -> dict[int, float]:
    passes = {}
    for k in ks:
        total_passes = total_plain = 0
        for name, audio, encoded, plain in corpus:
            got = asr.transcribe(audio, decoder=mtp_decoder(mtp, k), encoded=encoded)
            assert _tokens(got) == _tokens(plain), (name, k)
            assert got.text == plain.text
            assert all(sum(w.steps) == w.generated - 1 for w in got.windows)   # every token accounted for
            total_passes += got.passes
            total_plain += plain.passes
        passes[k] = total_plain / total_passes
    return passes


def test_mtp_untrained_heads_identical_to_plain(asr, corpus):
    mtp = freeze_for_inference(init_from_decoder(WhisperMTP(asr.model, 3, default_draft_ids(asr.vocab)),
                                                 asr.model))
    ratio = _check_identical(asr, corpus, mtp)
    print("\nuntrained heads, plain passes / MTP passes:", {k: round(v, 2) for k, v in ratio.items()})


def test_mtp_briefly_trained_heads_identical_to_plain(asr, corpus, tmp_path):
    from asr.torch_whisper.train import TrainConfig, run

    cfg = TrainConfig(steps=3, max_seconds=120, n_sentences=4, clip_seconds=(2.0, 6.0), batch_size=2, holdout=0.0)
    trained, summary = run("whisper-base", cfg, out=tmp_path / "heads.safetensors")
    assert summary["steps"] == 3 and (tmp_path / "heads.safetensors").exists()
    init = init_from_decoder(WhisperMTP(asr.model, 3, trained.draft_ids), asr.model)
    moved = [not torch.equal(a, b) for a, b in zip(trained.heads.parameters(), init.heads.parameters())]
    assert any(moved), "three optimiser steps must change the heads"
    mtp = freeze_for_inference(WhisperMTP.load(asr.model, tmp_path / "heads.safetensors"))
    ratio = _check_identical(asr, corpus, mtp)
    print("\nheads trained 3 steps, plain passes / MTP passes:", {k: round(v, 2) for k, v in ratio.items()})


@pytest.mark.parametrize("mode", ["oracle", "wrong"])
@pytest.mark.parametrize("k", [1, 3])
def test_verify_accepts_right_drafts_and_rolls_back_wrong_ones(asr, corpus, monkeypatch, mode, k):
    name, audio, encoded, plain = max(corpus, key=lambda row: row[3].generated)   # the longest transcript
    cross_k, cross_v = encoded[0]
    reference = plain.windows[0].tokens + [asr.vocab.eot]
    prompt_len = len(asr.vocab.prompt)

    def propose(self, hidden, tokens, n):
        done = len(tokens) - prompt_len                       # generated tokens committed, pending included
        right = reference[done:done + k] + [asr.vocab.eot] * k
        return right[:k] if mode == "oracle" else [(t + 1) % 50000 for t in right[:k]]

    monkeypatch.setattr(MTPDrafter, "propose", propose)
    mtp = WhisperMTP(asr.model, k, default_draft_ids(asr.vocab))
    got = mtp_decode(asr.model, cross_k, cross_v, asr.vocab, asr.filter, GreedyOptions(), mtp, k)
    want = greedy_decode(asr.model, cross_k, cross_v, asr.vocab, asr.filter)
    assert got.tokens == want.tokens == plain.windows[0].tokens
    n = want.generated
    if mode == "oracle":   # every step keeps all k drafts plus the decoder's own token
        assert got.passes == 1 + -(-(n - 1) // (k + 1))
        assert all(s == k + 1 for s in got.steps[:-1])
    else:                  # every draft rejected: one token per pass, like plain decoding
        assert got.passes == want.passes == n
        assert set(got.steps) == {1}


def test_cli_routes_whisper_models_to_this_trainer(capsys):
    from audio_server.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train-mtp", "--model", "whisper-base", "--help"])
    assert done.value.code == 0
    assert "voxline train-mtp --model whisper-base" in capsys.readouterr().out
