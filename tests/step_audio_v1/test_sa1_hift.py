"""Step-Audio-TTS-3B's 22.05 kHz HiFT against the v1 goldens (SPEC v1 §8.9, §10 ``hift_v1/``, §11).

The generator is the shared Step-Audio 2 module with the v1 configuration, loaded by
``vocoder.step_audio_v1.hift.load_hift_v1`` -> ``vocoder.step_audio2.loader.load_hift`` from the legacy
``weight_g``/``weight_v`` checkpoint. Tolerances are SPEC v1 §11's: source 1e-4, wav 1e-5 (a quiet signal, peak
0.014); f0 (≈ 120 Hz) 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vocoder.step_audio2.hift import HiFTGenerator
from vocoder.step_audio2.nsf_source import SavedDraws, TorchDraws
from vocoder.step_audio_v1.hift import STEP_AUDIO_V1_HIFT, hift_v1_config, load_hift_v1
from voxcore.strict_load import empty_parameters

F0_ATOL = 1e-4
SOURCE_ATOL = 1e-4
WAV_ATOL = 1e-5


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def hift(golden_dir, golden_json):
    return load_hift_v1(golden_dir / "hift_v1" / "weights.safetensors", golden_json("hift_v1/config.json"))


def test_full_size_v1_layout():
    with empty_parameters():
        model = HiFTGenerator(STEP_AUDIO_V1_HIFT)
    sd = model.state_dict()
    assert len(sd) == 227  # two source resblocks instead of three: 101 fewer entries than the 24 kHz model
    assert model.config.upsample_scale == 256 and model.config.source_variant == "v1"
    assert [tuple(c.weight.shape[1:]) for c in model.source_downs] == [(18, 16), (18, 1)]


def test_config_json_keeps_the_v1_defaults(golden_json):
    cfg = hift_v1_config(golden_json("hift_v1/config.json"))
    assert (cfg.sampling_rate, cfg.base_channels, cfg.upsample_rates, cfg.source_variant) == (22050, 32, (8, 8), "v1")
    assert hift_v1_config({"base_channels": 64}).upsample_rates == (8, 8)


def test_f0_source_and_decode_match_hift_v1_io(hift, golden):
    io = golden("hift_v1/io")
    assert torch.equal(hift.stft_window, io["stft_window_hann16"])
    draws = SavedDraws(io["phase_vec"], io["sine_noise"])  # the raw phase draw: the source zeroes entry 0
    with torch.no_grad():
        assert max_err(hift.f0(io["mel"]), io["f0"]) <= F0_ATOL
        assert max_err(hift.source(io["f0"], draws), io["source"]) <= SOURCE_ATOL
        assert max_err(hift.decode(io["mel"], io["source"]), io["wav"]) <= WAV_ATOL
        wav, source = hift(io["mel"], draws)
    assert wav.shape == (1, 256 * io["mel"].shape[-1])
    assert max_err(source, io["source"]) <= SOURCE_ATOL
    assert max_err(wav, io["wav"]) <= WAV_ATOL


def test_hift_on_the_v1_flow_mel(hift, golden):
    off = golden("flow_v1/offline")
    draws = SavedDraws(off["hift_phase_vec"], off["hift_sine_noise"])
    with torch.no_grad():
        assert max_err(hift.f0(off["output_mel"]), off["hift_f0"]) <= F0_ATOL
        wav, source = hift(off["output_mel"], draws)
    assert max_err(source, off["hift_source"]) <= SOURCE_ATOL
    assert max_err(wav, off["wav"]) <= WAV_ATOL
    assert off["hift_unused_noise_shape"].tolist() == [1, wav.shape[-1], 1]


def test_the_discarded_draw_keeps_a_seeded_stream_in_step(hift, golden):
    """A seeded source consumes phases, noise, and the discarded (B, L, 1) draw, in that order."""
    f0 = golden("hift_v1/io")["f0"]
    length = 256 * f0.shape[-1]
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        hift.source(f0, TorchDraws(gen))
    replay = torch.Generator().manual_seed(11)
    torch.rand((1, 9, 1), generator=replay)
    torch.randn((1, 9, length), generator=replay)
    torch.randn((1, length, 1), generator=replay)
    assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=replay))


def test_parametrisation_names_load_too(golden_dir, golden_json, hift):
    """The same weights saved in the parametrisation spelling (and with a ``generator.`` prefix) load identically."""
    sd = load_file(str(golden_dir / "hift_v1" / "weights.safetensors"))
    renamed = {"generator." + k.replace(".weight_g", ".parametrizations.weight.original0")
               .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in sd.items()}
    other = load_hift_v1(renamed, golden_json("hift_v1/config.json"))
    mel = torch.randn(1, 80, 6, generator=torch.Generator().manual_seed(0))
    source = torch.rand(1, 1, 256 * 6, generator=torch.Generator().manual_seed(1)) - 0.5
    with torch.no_grad():
        assert torch.equal(other.f0(mel), hift.f0(mel))
        assert torch.equal(other.decode(mel, source), hift.decode(mel, source))
