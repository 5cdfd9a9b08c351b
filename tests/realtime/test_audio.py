"""G.711 codecs (byte-exact), wire formats, streaming decode/encode at the session boundary."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from realtime.audio import (
    PCM16,
    PCMA,
    PCMU,
    AudioFormatError,
    InputDecoder,
    OutputEncoder,
    alaw_decode,
    alaw_encode,
    decode_bytes,
    parse_format,
    ulaw_decode,
    ulaw_encode,
)

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_BYTES = bytes(range(256))


def test_ulaw_known_values():
    # ITU-T G.711 μ-law: 0xFF/0x7F are ±0, 0x80/0x00 the largest magnitudes (±32124 in 16-bit).
    assert ulaw_decode(b"\xff\x7f\x80\x00").tolist() == [0, 0, 32124, -32124]
    samples = np.array([0, -1, 32767, -32768, 100, -100], np.int16)
    assert ulaw_encode(samples) == bytes([0xFF, 0x7E, 0x80, 0x00, 0xF2, 0x72])


def test_alaw_known_values():
    # A-law: 0xD5/0x55 are the smallest ±steps (±8), 0xAA/0x2A the largest (±32256).
    assert alaw_decode(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]
    samples = np.array([0, -1, 32767, -32768, 100, -100], np.int16)
    assert alaw_encode(samples) == bytes([0xD5, 0x55, 0xAA, 0x2A, 0xD3, 0x53])


def test_g711_matches_the_reference_implementation_on_every_input():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop", reason="audioop (the C reference) was removed in Python 3.13")
    raw = ALL_INT16.astype("<i2").tobytes()
    assert ulaw_encode(ALL_INT16) == audioop.lin2ulaw(raw, 2)
    assert alaw_encode(ALL_INT16) == audioop.lin2alaw(raw, 2)
    assert ulaw_decode(ALL_BYTES).astype("<i2").tobytes() == audioop.ulaw2lin(ALL_BYTES, 2)
    assert alaw_decode(ALL_BYTES).astype("<i2").tobytes() == audioop.alaw2lin(ALL_BYTES, 2)


def test_g711_code_round_trip_and_monotonic():
    # Decoding then encoding returns every code (μ-law has two zeros, 0x7F and 0xFF, both → 0 → 0xFF).
    assert alaw_encode(alaw_decode(ALL_BYTES)) == ALL_BYTES
    back = ulaw_encode(ulaw_decode(ALL_BYTES))
    assert [i for i in range(256) if back[i] != i] == [0x7F]
    for decode, encode in ((ulaw_decode, ulaw_encode), (alaw_decode, alaw_encode)):
        levels = decode(encode(ALL_INT16)).astype(np.int32)
        assert np.all(np.diff(levels) >= 0)  # quantisation keeps order
        err = np.abs(levels - ALL_INT16.astype(np.int32))
        assert err.max() <= 1024 and np.median(err[np.abs(ALL_INT16) < 1000]) <= 16  # fine steps near zero


def test_formats_both_dialects():
    assert parse_format("pcm16") is PCM16 and parse_format({"type": "audio/pcm", "rate": 24000}) is PCM16
    assert parse_format("g711_ulaw") is PCMU and parse_format({"type": "audio/pcmu"}) is PCMU
    assert parse_format("g711_alaw") is PCMA and parse_format({"type": "audio/pcma"}) is PCMA
    assert PCMU.ga_object() == {"type": "audio/pcmu"} and PCMA.beta_name == "g711_alaw"
    for bad in ("mp3", {"type": "audio/pcm", "rate": 16000}, {"type": "audio/opus"}, 5):
        with pytest.raises(ValueError):
            parse_format(bad)


def test_wrong_format_bytes_are_refused():
    with pytest.raises(AudioFormatError, match="even number"):
        decode_bytes(PCM16, b"\x00\x01\x02")
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40)
    with pytest.raises(AudioFormatError, match="WAV"):
        decode_bytes(PCM16, wav)
    assert len(decode_bytes(PCMU, b"\x01\x02\x03")) == 3  # any byte is a G.711 sample


@pytest.mark.parametrize("fmt", [PCM16, PCMU, PCMA])
def test_streaming_decode_equals_offline(fmt):
    rng = np.random.default_rng(0)
    t = np.arange(fmt.rate) / fmt.rate
    pcm = (np.sin(2 * np.pi * 440 * t) * 12000 + rng.normal(0, 300, fmt.rate)).astype(np.int16)
    wire = pcm.astype("<i2").tobytes() if fmt is PCM16 else (ulaw_encode(pcm) if fmt is PCMU else alaw_encode(pcm))
    whole = InputDecoder(fmt)(wire)
    dec = InputDecoder(fmt)
    step = 2 * 333 if fmt is PCM16 else 333  # odd chunk sizes (in samples)
    pieces = np.concatenate([dec(wire[i:i + step]) for i in range(0, len(wire), step)])
    n = min(len(whole), len(pieces))
    assert n > 0.9 * 16000  # soxr holds back its filter delay until flushed
    assert np.allclose(whole[:n], pieces[:n], atol=1e-5)


@pytest.mark.parametrize("fmt", [PCM16, PCMU, PCMA])
def test_output_encoder_rate_and_level(fmt):
    enc = OutputEncoder(fmt, 22050)
    tone = (np.sin(np.arange(22050) * 2 * np.pi * 300 / 22050) * 16000).astype(np.int16)
    out = b"".join(enc(tone[i:i + 1000]) for i in range(0, len(tone), 1000)) + enc(np.zeros(0, np.int16), last=True)
    samples = len(out) // fmt.bytes_per_sample
    assert abs(samples - fmt.rate) <= 2  # one second in, one second out
    back = decode_bytes(fmt, out)
    assert 0.335 < np.sqrt(np.mean(back[1000:-1000] ** 2)) < 0.355  # 16000/32768/√2 ≈ 0.345, ± G.711 error
