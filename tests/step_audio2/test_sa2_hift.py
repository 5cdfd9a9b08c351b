"""Step-Audio 2 HiFT vocoder, its streaming state and the 24 kHz prompt mel against the goldens (SPEC2 §9-§13).

Every model here is loaded by ``vocoder.step_audio2.loader.load_hift``, the same function a user's ``hift.pt`` goes
through. Tolerances are SPEC2 §13's: HiFT f0/source/decode-from-given-source 1e-4, end-to-end wav 1e-3 (the 80-frame
mel after a flow differs up to 1.6e-4 across thread counts; the float32 f0 itself carries ~7e-5 of rounding).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from vocoder.step_audio2.hift import HiFTConfig, HiFTGenerator
from vocoder.step_audio2.hift_stream import HiFTStream, hamming_window_symmetric, to_pcm16
from vocoder.step_audio2.loader import hift_config, load_hift
from vocoder.step_audio2.nsf_source import SavedDraws, TorchDraws
from vocoder.step_audio2.prompt_mel import fit_prompt_mel, prompt_mel_24k
from voxcore.strict_load import CheckpointError, empty_parameters
from voxcore.whisper_mel import slaney_filterbank

HIFT_ATOL = 1e-4  # f0, source, decode from a given source
E2E_ATOL = 1e-3  # wav from the mel, with the saved draws
LSB_PER_E2E = int(32767 * E2E_ATOL) + 1  # int16 steps that an E2E_ATOL float difference can move


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def hift(golden_dir, golden_json):
    return load_hift(golden_dir / "hift" / "weights.safetensors", golden_json("hift/config.json"))


@pytest.fixture(scope="module")
def hift_io(golden):
    return golden("hift/io")


# -- layout and loading --

def test_full_size_default_layout_is_the_reference_one():
    with empty_parameters():
        model = HiFTGenerator()
    sd = model.state_dict()
    assert len(sd) == 328
    assert sum(t.numel() for t in sd.values()) == 20_821_295
    assert model.config.upsample_scale == 480 and model.config.source_variant == "24k"


def test_config_json_sets_the_tiny_sizes(golden_json):
    cfg = hift_config(golden_json("hift/config.json"))
    assert (cfg.base_channels, cfg.f0_channels, cfg.upsample_scale, cfg.n_fft, cfg.hop_len) == (32, 32, 480, 16, 4)
    assert hift_config(None) == HiFTConfig()
    with pytest.raises(ValueError, match="unknown HiFT config key"):
        hift_config({"base_chanels": 32})
    with pytest.raises(ValueError, match="upsample_scale"):
        hift_config({"upsample_scale": 256})


def test_official_spellings_load_the_same_model(golden_dir, golden_json, hift, hift_io, tmp_path):
    """A ``hift.pt`` pickle with the ``generator.`` prefix and legacy weight_g/weight_v names loads identically."""
    sd = load_file(str(golden_dir / "hift" / "weights.safetensors"))
    legacy = {}
    for key, value in sd.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        legacy["generator." + key] = value
    torch.save(legacy, tmp_path / "hift.pt")
    other = load_hift(tmp_path / "hift.pt", golden_json("hift/config.json"))
    with torch.no_grad():
        assert torch.equal(other.decode(hift_io["mel"], hift_io["source"]), hift.decode(hift_io["mel"], hift_io["source"]))


def test_a_mismatched_checkpoint_is_named_in_one_error(golden_dir, golden_json, tmp_path):
    sd = load_file(str(golden_dir / "hift" / "weights.safetensors"))
    sd.pop("conv_post.bias")
    sd["extra.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_hift(tmp_path / "bad.safetensors", golden_json("hift/config.json"))
    assert "conv_post.bias" in str(err.value) and "extra.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_hift(golden_dir / "hift" / "weights.safetensors")  # full-size config, tiny weights


def test_dtype_and_derived_window(golden_dir, golden_json, hift_io):
    model = load_hift(golden_dir / "hift" / "weights.safetensors", golden_json("hift/config.json"),
                      dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert torch.equal(model.stft_window, hift_io["stft_window_hann16_periodic"])
    with torch.no_grad():
        wav = model.decode(hift_io["mel"], hift_io["source"])
    assert wav.dtype == torch.float64 and max_err(wav, hift_io["wav"]) <= HIFT_ATOL


# -- hift/io: standalone tiny HiFT, draws injected --

def test_f0_source_and_decode_match_hift_io(hift, hift_io):
    draws = SavedDraws(hift_io["rand_ini"], hift_io["sine_noise"])
    with torch.no_grad():
        assert max_err(hift.f0(hift_io["mel"]), hift_io["f0"]) <= HIFT_ATOL
        assert max_err(hift.source(hift_io["f0"], draws), hift_io["source"]) <= HIFT_ATOL
        assert max_err(hift.decode(hift_io["mel"], hift_io["source"]), hift_io["wav"]) <= HIFT_ATOL
        wav, source = hift(hift_io["mel"], draws)
    assert wav.shape == (1, 480 * 20)
    assert max_err(source, hift_io["source"]) <= HIFT_ATOL
    assert max_err(wav, hift_io["wav"]) <= E2E_ATOL


def test_draws_are_injectable_and_checked(hift, hift_io):
    with torch.no_grad():
        f0 = hift_io["f0"]
        a = hift.source(f0, TorchDraws(torch.Generator().manual_seed(5)))
        b = hift.source(f0, TorchDraws(torch.Generator().manual_seed(5)))
        c = hift.source(f0, TorchDraws(torch.Generator().manual_seed(6)))
        assert torch.equal(a, b) and not torch.equal(a, c)
        with pytest.raises(ValueError, match="sine_noise"):
            hift.source(f0[:, :10], SavedDraws(hift_io["rand_ini"], hift_io["sine_noise"]))


# -- flow/offline: HiFT on the flow's 80-frame mel, and the prompt mel --

def test_hift_on_the_offline_flow_mel(hift, golden):
    off = golden("flow/offline")
    draws = SavedDraws(off["hift_rand_ini"], off["hift_sine_noise"])
    with torch.no_grad():
        assert max_err(hift.f0(off["output_mel"]), off["hift_f0"]) <= HIFT_ATOL
        assert max_err(hift.source(off["hift_f0"], draws), off["hift_source"]) <= HIFT_ATOL
        assert max_err(hift.decode(off["output_mel"], off["hift_source"]), off["wav"]) <= HIFT_ATOL
        wav, source = hift(off["output_mel"], draws)
    assert max_err(source, off["hift_source"]) <= HIFT_ATOL
    assert max_err(wav, off["wav"]) <= E2E_ATOL


def test_prompt_mel_24k(golden):
    off = golden("flow/offline")
    assert max_err(slaney_filterbank(24000, 1920, 80, 8000.0), off["mel_filterbank_24k_80x961"]) <= 1e-7
    raw = prompt_mel_24k(off["prompt_wav_24k"])
    assert max_err(raw, off["prompt_mel_raw"]) <= HIFT_ATOL
    n_codes = off["prompt_tokens"].shape[1]
    fitted = fit_prompt_mel(raw, n_codes)
    assert fitted.shape[1] == int(off["prompt_mels_lens"][0]) == 2 * n_codes
    assert max_err(fitted, off["prompt_mels"]) <= HIFT_ATOL
    assert torch.equal(fitted[:, raw.shape[1]:], raw[:, -1:].expand(-1, fitted.shape[1] - raw.shape[1], -1))
    assert torch.equal(fit_prompt_mel(raw, 5), raw[:, :10])


# -- flow/stream: the HiFT streaming state on the golden chunk mels --

def _chunk_draws(stream_golden, i: int) -> SavedDraws:
    return SavedDraws(stream_golden[f"chunk{i}_hift_rand_ini"], stream_golden[f"chunk{i}_hift_sine_noise"])


def test_stream_chunks_match(hift, golden, golden_json):
    st = golden("flow/stream")
    meta = golden_json("flow/stream_meta.json")
    assert torch.equal(hamming_window_symmetric(7680).float(), st["speech_window_hamming_7680"])
    stream = HiFTStream(hift)
    assert stream.source_cache_samples == meta["source_cache_len"] == 3840
    n_chunks = len(meta["chunks"])
    for i in range(n_chunks):
        last = i == n_chunks - 1
        out = stream.push(st[f"chunk{i}_mel"], last=last, draws=_chunk_draws(st, i))
        assert out.audio.shape[-1] == meta["chunks"][i]["emitted_samples"] == (20160, 24000, 24000, 18240)[i]
        assert max_err(out.raw, st[f"chunk{i}_hift_speech_raw"]) <= E2E_ATOL
        assert max_err(out.audio, st[f"chunk{i}_emitted_float"]) <= E2E_ATOL
        want = st[f"chunk{i}_emitted_pcm16"]
        # The reference's PCM rule on its own floats is reproduced exactly ...
        assert torch.equal(to_pcm16(st[f"chunk{i}_emitted_float"][0]), want)
        # ... and ours stays within ±1 LSB except where the float tolerance itself spans more steps.
        lsb = (out.pcm16[0].int() - want.int()).abs()
        assert out.pcm16.dtype == torch.int16
        assert (lsb <= 1).float().mean() >= 0.99 and lsb.max() <= LSB_PER_E2E


def test_stream_state_resets_per_session(hift, golden):
    st = golden("flow/stream")
    stream = HiFTStream(hift)
    first = stream.push(st["chunk0_mel"], draws=_chunk_draws(st, 0)).audio
    stream.push(st["chunk1_mel"], draws=_chunk_draws(st, 1))
    stream.reset()
    again = stream.push(st["chunk0_mel"], draws=_chunk_draws(st, 0)).audio
    assert torch.equal(first, again)
    # A last chunk flushes everything and leaves a fresh state for the next utterance.
    flushed = HiFTStream(hift).push(st["chunk0_mel"], last=True, draws=_chunk_draws(st, 0))
    assert flushed.audio.shape[-1] == 24000 and torch.equal(flushed.audio, flushed.raw)
