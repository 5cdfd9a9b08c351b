"""k-means, the nearest-centroid codebook, the log-mel front end and the DTW agreement metric."""

from __future__ import annotations

import math

import pytest
import torch

from tokenizer.codebook import NearestCentroidCodebook, kmeans
from tokenizer.features import LogMel, mel_filterbank
from tokenizer.codebook import dtw_agreement
from tokenizer.train_codebook import main as train_main


def blobs(k=8, per=50, dim=6, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 3
    labels = torch.arange(k).repeat_interleave(per)
    return centres[labels] + spread * torch.randn(k * per, dim, generator=g), labels, centres


def test_kmeans_recovers_separated_clusters():
    x, labels, centres = blobs()
    found = kmeans(x, 8, seed=1)
    # Every true centre has a found centroid right next to it, and the partition is exact.
    assert torch.cdist(centres, found).min(1).values.max() < 0.1
    assign = torch.cdist(x, found).argmin(1)
    for c in range(8):
        assert assign[labels == c].unique().numel() == 1
    assert assign.unique().numel() == 8


def test_kmeans_uses_every_code_and_refuses_too_little_data():
    x, _, _ = blobs(k=3, per=30)
    found = kmeans(x, 12, seed=0)  # more codes than clusters: empty ones get re-seeded, none dead
    assert torch.cdist(x, found).argmin(1).unique().numel() == 12
    with pytest.raises(ValueError, match="fewer codes"):
        kmeans(x[:5], 8)


def test_codebook_matches_brute_force_and_round_trips(tmp_path):
    x, _, _ = blobs(k=5, per=40, dim=7, spread=1.0)
    book = NearestCentroidCodebook.fit(x * torch.tensor([1, 100, 1, 1, 1, 1, 1.0]), 16, seed=0)
    z = x * torch.tensor([1, 100, 1, 1, 1, 1, 1.0])
    brute = torch.cdist((z - book.mean) / book.std, book.centroids).argmin(1)
    assert torch.equal(book(z), brute)
    codes, margin = book.codes_and_margin(z)
    assert torch.equal(codes, brute) and (margin >= 0).all()
    path = book.save(tmp_path / "book.safetensors", {"note": "test"})
    again = NearestCentroidCodebook.load(path)
    assert torch.equal(again(z), brute)


def test_dtw_agreement_properties():
    a = torch.tensor([1, 2, 3, 4, 5])
    assert dtw_agreement(a, a) == 1.0
    assert dtw_agreement(a, a.repeat_interleave(2)) == 1.0  # same content, half the speed
    assert dtw_agreement(a, a + 10) == 0.0
    b = torch.tensor([1, 2, 9, 4, 5, 5])
    assert dtw_agreement(a, b) == pytest.approx(dtw_agreement(b, a))
    assert 0.0 < dtw_agreement(a, b) < 1.0
    assert dtw_agreement(a, torch.tensor([], dtype=torch.long)) == 0.0


def test_log_mel_puts_a_tone_in_the_right_band():
    sr, freq = 16000, 1000.0
    t = torch.arange(sr) / sr
    mel = LogMel(80)(torch.sin(2 * math.pi * freq * t)[None])  # [1, 80, 100]
    assert mel.shape == (1, 80, 100)
    peak = mel[0, :, 10:].mean(-1).argmax().item()
    fb = mel_filterbank(sr, 400, 80)  # [201, 80]
    centre_hz = (fb[:, peak].argmax().item()) * sr / 400
    assert abs(centre_hz - freq) < 100


def test_log_mel_is_causal_and_streams():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4800, generator=g)
    mel = LogMel(128)
    full = mel(x)
    y = x.clone()
    y[:, 2400:] = 0  # change the future
    torch.testing.assert_close(mel(y)[..., :15], full[..., :15])  # frames ending by sample 2400
    from voxcore.streaming import bind_state_keys, init_states

    bind_state_keys(mel)
    states = init_states(mel, 2, device="cpu")
    parts = [mel(x[:, i:i + 480], states) for i in range(0, 4800, 480)]
    torch.testing.assert_close(torch.cat(parts, -1), full, atol=1e-5, rtol=0)


def test_train_codebook_cli_rejects_bad_arguments(capsys):
    assert train_main(["--codes", "1"]) == 2
    assert "--codes" in capsys.readouterr().err
