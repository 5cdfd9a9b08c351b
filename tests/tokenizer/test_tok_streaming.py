"""The dual-codebook tokenizer (tiny random weights): streamed == offline, causal, slots independent.

Tolerance: features streamed vs offline within 1e-4 absolute (float32; the same ops run on different
chunk shapes, so only summation order differs: observed ~1e-6). Codes must be identical except at
near-ties, where the best and second-best centroid distances differ by < 1e-3 (none expected, but a
rounding flip there would be legitimate, not a bug).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tokenizer.model import DualCodebookTokenizer, TokenizerConfig, TokenizerOutput

GROUP = 1920
ATOL = 1e-4
TIE = 1e-3


@pytest.fixture(scope="module")
def tok() -> DualCodebookTokenizer:
    return DualCodebookTokenizer.tiny(seed=0)


def stream(tok: DualCodebookTokenizer, audio: torch.Tensor, chunk: int) -> TokenizerOutput:
    state = tok.init_state(audio.shape[0])
    outs = [tok(audio[:, i:i + chunk], state) for i in range(0, audio.shape[-1], chunk)]
    outs.append(tok.flush(state))
    cat = lambda name: torch.cat([getattr(o, name) for o in outs], dim=1)  # noqa: E731
    return TokenizerOutput(cat("linguistic"), cat("semantic"), cat("linguistic_features"), cat("semantic_features"))


def assert_same(tok: DualCodebookTokenizer, got: TokenizerOutput, want: TokenizerOutput) -> None:
    for stream_name, book in (("linguistic", tok.linguistic_codebook), ("semantic", tok.semantic_codebook)):
        f_got, f_want = getattr(got, f"{stream_name}_features"), getattr(want, f"{stream_name}_features")
        assert f_got.shape == f_want.shape
        torch.testing.assert_close(f_got, f_want, atol=ATOL, rtol=0)
        _, margin = book.codes_and_margin(f_want)
        differ = getattr(got, stream_name) != getattr(want, stream_name)
        assert not (differ & (margin > TIE)).any(), f"{stream_name} codes differ away from a near-tie"


@pytest.mark.parametrize("chunk", [GROUP, 2 * GROUP, 7 * GROUP, 160, 1001, 2333])
def test_streamed_equals_offline(tok, two_clips, chunk):
    offline = tok(two_clips)
    groups = -(-two_clips.shape[-1] // GROUP)
    assert offline.linguistic.shape == (2, 2 * groups) and offline.semantic.shape == (2, 3 * groups)
    assert_same(tok, stream(tok, two_clips, chunk), offline)


def test_one_sample_chunks(tok, two_clips):
    audio = two_clips[:, :5000]  # 2.6 groups, pushed one sample at a time
    assert_same(tok, stream(tok, audio, 1), tok(audio))


def test_codes_are_diverse_and_in_range(tok, two_clips):
    out = tok(two_clips)
    assert 0 <= out.linguistic.min() and out.linguistic.max() < tok.cfg.linguistic_codes
    assert 0 <= out.semantic.min() and out.semantic.max() < tok.cfg.semantic_codes
    # Random weights still map different speech to different codes (not one constant code).
    assert out.linguistic.unique().numel() > 3 and out.semantic.unique().numel() > 2
    ids = out.ids()
    assert ids.shape == (2, 5 * out.linguistic.shape[1] // 2)


def test_future_audio_never_changes_earlier_codes(tok, two_clips):
    prefix_groups = 7
    cut = prefix_groups * GROUP
    other = two_clips.clone()
    other[:, cut:] = torch.randn_like(other[:, cut:]) * 0.3  # different future
    a, b = tok(two_clips), tok(other)
    torch.testing.assert_close(a.linguistic_features[:, :2 * prefix_groups],
                               b.linguistic_features[:, :2 * prefix_groups], atol=ATOL, rtol=0)
    torch.testing.assert_close(a.semantic_features[:, :3 * prefix_groups],
                               b.semantic_features[:, :3 * prefix_groups], atol=ATOL, rtol=0)
    # ... while the future itself did change (the check above is not vacuous).
    assert (a.semantic_features[:, 3 * prefix_groups:] - b.semantic_features[:, 3 * prefix_groups:]).abs().max() > 1e-2


def test_emitted_codes_only_cover_complete_groups(tok, two_clips):
    state = tok.init_state(2)
    out = tok(two_clips[:, :GROUP - 1], state)
    assert out.linguistic.shape[1] == 0 and state.pending.shape[1] == GROUP - 1
    out = tok(two_clips[:, GROUP - 1:GROUP + 5], state)
    assert out.linguistic.shape[1] == 2 and out.semantic.shape[1] == 3 and state.pending.shape[1] == 5
    assert tok.flush(state).semantic.shape[1] == 3
    assert tok.flush(state).semantic.shape[1] == 0  # nothing left


def test_batch_slots_are_independent(tok, two_clips):
    alone = tok(two_clips[1:])
    noisy = two_clips.clone()
    noisy[0] = torch.randn_like(noisy[0])
    together = tok(noisy)
    torch.testing.assert_close(together.semantic_features[1:], alone.semantic_features, atol=ATOL, rtol=0)
    torch.testing.assert_close(together.linguistic_features[1:], alone.linguistic_features, atol=ATOL, rtol=0)


def test_slot_reset_starts_a_fresh_session(tok, two_clips):
    state = tok.init_state(2)
    first = tok(two_clips[:, :5 * GROUP], state)
    new_session = two_clips[0, 5 * GROUP:12 * GROUP]  # slot 1 now hears a different utterance
    state.reset(torch.tensor([False, True]))
    second = tok(torch.stack([two_clips[0, 5 * GROUP:12 * GROUP], new_session]), state)
    # Slot 0 continues its stream undisturbed...
    whole0 = tok(two_clips[:1, :12 * GROUP])
    torch.testing.assert_close(torch.cat([first.semantic_features[:1], second.semantic_features[:1]], 1),
                               whole0.semantic_features, atol=ATOL, rtol=0)
    # ... and slot 1 matches an offline run of its new utterance alone.
    fresh = tok(new_session[None])
    torch.testing.assert_close(second.semantic_features[1:], fresh.semantic_features, atol=ATOL, rtol=0)
    torch.testing.assert_close(second.linguistic_features[1:], fresh.linguistic_features, atol=ATOL, rtol=0)


def test_reset_mid_group_is_refused(tok, two_clips):
    state = tok.init_state(2)
    tok(two_clips[:, :1000], state)
    with pytest.raises(ValueError, match="120 ms"):
        state.reset(torch.tensor([True, False]))


def test_tiny_is_reproducible_from_its_seed(two_clips):
    a, b, c = DualCodebookTokenizer.tiny(0), DualCodebookTokenizer.tiny(0), DualCodebookTokenizer.tiny(1)
    x = two_clips[:, :4 * GROUP]
    assert torch.equal(a(x).semantic_features, b(x).semantic_features)
    assert not torch.allclose(a(x).semantic_features, c(x).semantic_features)


def test_checkpoint_round_trip(tok, two_clips, tmp_path):
    tok.save_pretrained(tmp_path / "ckpt")
    loaded = DualCodebookTokenizer.from_pretrained(tmp_path / "ckpt")
    assert loaded.cfg == tok.cfg
    x = two_clips[:, :6 * GROUP]
    a, b = tok(x), loaded(x)
    assert torch.equal(a.linguistic, b.linguistic) and torch.equal(a.semantic, b.semantic)
    assert torch.equal(a.semantic_features, b.semantic_features)


def test_checkpoint_mismatches_are_loud(tok, tmp_path):
    tok.save_pretrained(tmp_path / "ckpt")
    other = DualCodebookTokenizer(dataclasses.replace(TokenizerConfig.tiny(), semantic_dim=64))
    other.save_pretrained(tmp_path / "other")
    # Weights of one size with the config of another: refused with the tensor named.
    (tmp_path / "other" / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    with pytest.raises(ValueError, match="shape"):
        DualCodebookTokenizer.from_pretrained(tmp_path / "other")
    (tmp_path / "ckpt" / "config.json").write_text('{"architecture": "voxline.DualCodebookTokenizer", "bogus": 1}')
    with pytest.raises(ValueError, match="unknown fields"):
        DualCodebookTokenizer.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError):
        DualCodebookTokenizer.from_pretrained(tmp_path / "missing")
