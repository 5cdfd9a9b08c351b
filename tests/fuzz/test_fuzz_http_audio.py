"""Fuzzing the HTTP audio decoder (`audio_io.decode_audio`, behind `/v1/audio/transcriptions`): random
bytes and real files with random damage (header fields overwritten, bytes flipped, truncated, spliced) in
WAV, FLAC, Ogg/Vorbis and MP3. The decoder returns finite mono float32 within its duration limit or raises
`AudioDecodeError`; the route answers 4xx, never 5xx."""

from __future__ import annotations

import io
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pytest
import soundfile
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from audio_server.audio_io import AudioDecodeError, decode_audio
from bench.common import DATA, read
from tests.fuzz.strategies import fuzz_settings

MAX_S = 20.0


def _encode(fmt: str, subtype: str | None) -> bytes:
    clip = read(DATA / "commands" / "001.wav")[:8000]  # 0.5 s of real speech
    buf = io.BytesIO()
    soundfile.write(buf, clip, 16000, format=fmt, subtype=subtype)
    return buf.getvalue()


SEEDS = {name: _encode(fmt, sub) for name, fmt, sub in (
    ("wav16", "WAV", "PCM_16"), ("wavfloat", "WAV", "FLOAT"), ("flac", "FLAC", "PCM_16"),
    ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III"))}


# RIFF/WAVE header fields: (offset, struct format) of riff size, channels, rate, byte rate, block align,
# bits per sample, data size (soundfile writes the canonical 44-byte header).
WAV_FIELDS = [(4, "<I"), (22, "<H"), (24, "<I"), (28, "<I"), (32, "<H"), (34, "<H"), (40, "<I")]
EXTREMES = [0, 1, 2, 3, 7, 100, 255, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def damaged(draw) -> bytes:
    seed = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[seed])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(("field", "field", "flip", "truncate", "splice", "zero")
                                  + (("wavfield", "wavfield") if seed.startswith("wav") else ())))
        if op == "wavfield" and len(data) >= 44:  # grammar-aware: one named header field, extreme value
            offset, fmt = draw(st.sampled_from(WAV_FIELDS))
            value = draw(st.sampled_from(EXTREMES) | st.integers(0, 2 ** 32 - 1))
            data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
            continue
        # Header fields (rates, channel counts, sizes, …) sit in the first bytes: edit those most.
        at = draw(st.integers(0, max(0, min(len(data) - 1, 64 if op == "field" else len(data) - 1))))
        if op == "field":  # set to something extreme, as a 16- or 32-bit little- or big-endian integer
            value = draw(st.sampled_from(EXTREMES) | st.integers(0, 2 ** 32 - 1))
            fmt = draw(st.sampled_from(["<I", ">I", "<H", ">H"]))
            data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
        elif op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            data[at:at] = draw(st.binary(max_size=64))
        elif op == "zero":
            data[at:at + 64] = bytes(len(data[at:at + 64]))
    return bytes(data)


def check_decoded(data: bytes) -> None:
    try:
        audio = decode_audio(data, 16000, max_seconds=MAX_S)
    except AudioDecodeError as exc:
        assert str(exc)
        return
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all() and np.abs(audio).max(initial=0) <= 1.0
    assert len(audio) <= MAX_S * 16000 + 16000


@fuzz_settings(200)
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_raise_decode_error(data):
    check_decoded(data)


@fuzz_settings(300)
@given(damaged())
def test_damaged_files_decode_or_raise_decode_error(data):
    check_decoded(data)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_undamaged_seeds_decode(name):
    audio = decode_audio(SEEDS[name], 16000, max_seconds=MAX_S)
    assert 0.4 < len(audio) / 16000 < 0.7  # mp3 pads a little


def test_regression_wav_claiming_1_hz_is_refused_not_resampled_to_gigabytes():
    data = bytearray(SEEDS["wav16"])
    data[24:28] = struct.pack("<I", 1)  # sample rate
    data[28:32] = struct.pack("<I", 2)  # byte rate
    with pytest.raises(AudioDecodeError, match="sample rate"):
        decode_audio(bytes(data), 16000)


def test_regression_audio_longer_than_the_limit_is_refused_before_decoding():
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(16000 * 30, np.float32), 16000, format="FLAC")  # compresses to almost nothing
    with pytest.raises(AudioDecodeError, match="longer than"):
        decode_audio(buf.getvalue(), 16000, max_seconds=MAX_S)


@pytest.mark.parametrize("rate", [16000, 81536])  # 81536 Hz: the damaged header the fuzzer found
def test_regression_nan_inf_and_huge_samples_in_a_float_wav_come_out_finite(rate):
    samples = np.tile(np.array([0.5, np.nan, np.inf, -np.inf, 3.0, 3e38, -3e38, 0.0], np.float32), 200)
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    audio = decode_audio(buf.getvalue(), 16000)
    assert len(audio) and np.isfinite(audio).all() and np.abs(audio).max() <= 1.0


# ---- the route ------------------------------------------------------------------------------------------
@dataclass
class _Transcript:
    text: str
    duration: float
    segments: tuple = ()


class _EchoASR:
    def transcribe(self, audio, options=None):
        return _Transcript(f"{len(audio)} samples", len(audio) / 16000)


class _Hub:
    """Just what /v1/audio/transcriptions needs (no model is loaded: the decoder is under test)."""

    def __init__(self, settings):
        self.settings = settings
        self.executor = ThreadPoolExecutor(2)

    def resolve_asr_name(self, requested, batch=False):
        return "whisper-base"

    def asr(self, name=None):
        return _EchoASR()

    def llm(self, name=None):
        return None

    def close(self):
        self.executor.shutdown()


@pytest.fixture(scope="module")
def client():
    from audio_server.app import create_app
    from audio_server.settings import Settings

    settings = replace(Settings(), max_upload_bytes=256 * 1024, max_request_bytes=512 * 1024, max_upload_audio_s=MAX_S)
    hub = _Hub(settings)
    yield TestClient(create_app(settings, hub), raise_server_exceptions=False)
    hub.close()


@fuzz_settings(150)
@given(st.one_of(damaged(), st.binary(max_size=2048)), st.sampled_from(["a.wav", "x", "a.mp3", ""]))
def test_any_upload_gets_4xx_or_a_transcript_never_5xx(client, data, filename):
    r = client.post("/v1/audio/transcriptions", files={"file": (filename or "f", data, "application/octet-stream")},
                    data={"model": "whisper-1"})
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        assert r.json()["text"].endswith("samples")
    else:
        assert r.json()["error"]["message"]


def test_body_over_max_request_bytes_is_413_even_without_content_length(client):
    big = b"\0" * (600 * 1024)
    r = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", big, "audio/wav")})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # chunked transfer: no Content-Length, the limit is enforced while reading
        for _ in range(10):
            yield b"x" * (64 * 1024)

    r = client.post("/v1/audio/speech", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
