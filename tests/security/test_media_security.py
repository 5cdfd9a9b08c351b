"""Issue 15, items 4 and 10: media an attacker controls — an upload that decodes to gigabytes, and WebRTC offers
whose ICE candidates point the server at other hosts, at the mDNS group or at impossible ports, or whose
call id belongs to another key. Each attack runs against a live server on loopback; each test also shows a
legitimate request or call going through."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import httpx
import numpy as np
import pytest
import soundfile

from audio_server.audio_io import SpeechEncoder
from bench.common import DATA, read

# ---- item 4: decompression bomb --------------------------------------------------------------------------------
RSS_GROWTH_LIMIT = 300 * 2 ** 20


def flac_bomb(seconds: int = 1790, channels: int = 8, rate: int = 48000) -> bytes:
    """The probe's file: 1790 s of 8-channel 48 kHz silence, ~711 KB of FLAC, 2.75 GB as float32. Under the
    default 1800 s duration limit."""
    buf = io.BytesIO()
    block = np.zeros((rate * 10, channels), np.int16)
    with soundfile.SoundFile(buf, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds // 10):
            f.write(block)
    return buf.getvalue()


def without_length(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field zeroed: "length unknown", as a stream written to a
    pipe says (`ffmpeg -f flac -`). The header check cannot see the size; only counting while decoding can."""
    data = bytearray(flac)
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    info = 8  # 'fLaC' + the block header
    data[info + 13] &= 0xF0  # total samples: the low 4 bits of byte 13 and bytes 14–17
    data[info + 14:info + 18] = bytes(4)
    return bytes(data)


@dataclass
class _Transcript:
    text: str
    duration: float
    segments: tuple = ()


class _CountingASR:
    """Stands in for Whisper: the decoder is under test, not the model."""

    def transcribe(self, audio, options=None):
        return _Transcript(f"{len(audio)} samples", len(audio) / 16000)


class _Hub:
    """Just what /v1/audio/transcriptions needs, with the real route, decoder and worker pool."""

    def __init__(self, settings):
        self.settings = settings
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="fake-hub")

    def resolve_asr_name(self, requested):
        return "whisper-base"

    def asr(self, name=None):
        return _CountingASR()

    def llm(self, name=None):
        return None

    def close(self):
        self.executor.shutdown()


@pytest.fixture(scope="module")
def upload_server():
    from audio_server.app import create_app
    from audio_server.live import LiveServer
    from audio_server.settings import Settings

    settings = Settings()  # the defaults the probe met: 25 MB uploads, 1800 s of audio
    hub = _Hub(settings)
    live = LiveServer(create_app(settings, hub)).start()
    yield live
    live.stop()
    hub.close()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """This process's resident memory, sampled every 2 ms while the block runs (the server is a thread of it)."""

    def __enter__(self) -> "PeakRSS":
        self.before = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.before


def _transcribe(base_url: str, data: bytes, name: str) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    with httpx.Client(timeout=300) as http:
        r = http.post(base_url + "/v1/audio/transcriptions", files={"file": (name, data, "audio/flac")},
                      data={"model": "whisper-1"})
    return r, time.perf_counter() - t0


def _streamed_speech_flac() -> tuple[bytes, int]:
    """A real recording as FLAC written without seeking (no length in its header), like `ffmpeg -f flac -`."""
    speech = (read(DATA / "commands" / "001.wav") * 32767).astype(np.int16)
    encoder = SpeechEncoder("flac", 16000)
    return encoder.encode(speech) + encoder.finish(), len(speech)


@pytest.mark.parametrize("header", ["says its length", "hides its length"])
def test_flac_bomb_is_refused_and_memory_stays_bounded(upload_server, header):
    bomb = flac_bomb()
    if header == "hides its length":
        bomb = without_length(bomb)
    legit, legit_samples = _streamed_speech_flac()
    results: dict[str, tuple[httpx.Response, float]] = {}

    with PeakRSS() as rss:
        attack = threading.Thread(target=lambda: results.update(bomb=_transcribe(upload_server.base_url, bomb, "b.flac")))
        attack.start()
        health = []
        while attack.is_alive() and len(health) < 20:  # the loop stays free while the decode runs
            t0 = time.perf_counter()
            assert httpx.get(upload_server.base_url + "/healthz", timeout=10).status_code == 200
            health.append(time.perf_counter() - t0)
            time.sleep(0.05)
        results["legit"] = _transcribe(upload_server.base_url, legit, "speech.flac")
        attack.join(300)

    r, took = results["bomb"]
    print(f"\nFLAC bomb ({header}, {len(bomb) / 1024:.0f} KB): HTTP {r.status_code} in {took:.2f} s; server RSS "
          f"{rss.before / 2**20:.0f} MB before, peak {rss.peak / 2**20:.0f} MB (+{rss.growth / 2**20:.0f} MB); "
          f"/healthz during it: {len(health)} probes, slowest {max(health, default=0) * 1000:.0f} ms")
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "invalid_audio" and "samples" in error["message"], error
    assert rss.growth < RSS_GROWTH_LIMIT, f"RSS grew {rss.growth / 2**20:.0f} MB"
    assert max(health, default=0) < 2.0

    # A streamed FLAC (no length in its header) of real speech is decoded, not refused for its header.
    ok, _ = results["legit"]
    assert ok.status_code == 200, ok.text[:300]
    assert ok.json()["text"] == f"{legit_samples} samples"
