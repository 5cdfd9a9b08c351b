"""Fixtures for the realtime socket tests: a live server whose socket takes OpenAI-sized messages, the real
chat engine when the runtime provides one, and speech made with the embedded Piper voice."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import replace

import numpy as np
import pytest

from realtime.audio import StreamResampler


@pytest.fixture(scope="module")
def rt_server(hub):
    """A server whose WebSocket limit fits a 15 MiB append (20 MiB of base64): uvicorn's ws_max_size is
    4 × max_ws_message_bytes in LiveServer."""
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    app = create_app(replace(hub.settings, max_ws_message_bytes=8 * 1024 * 1024), hub)
    hub.load_all()
    live = LiveServer(app).start()
    yield live
    live.stop()


@pytest.fixture(scope="session")
def real_engine():
    """The process's real LLM (`runtime.llm`), or a skip saying precisely why it cannot be had."""
    from realtime.engine_provider import engine_unavailable_reason

    reason = engine_unavailable_reason()
    if reason:
        pytest.skip(f"the shared chat engine is not available: {reason}")
    from runtime.llm import get_engine

    t0 = time.perf_counter()
    engine = get_engine()
    print(f"\nreal chat engine {engine.model_id} ready in {time.perf_counter() - t0:.1f} s")
    return engine


@pytest.fixture(scope="session")
def say(hub):
    """Text → int16 speech at `rate` (Piper, resampled), cached."""
    cache: dict[tuple[str, int], np.ndarray] = {}

    def make(text: str, rate: int = 24000) -> np.ndarray:
        if (text, rate) not in cache:
            tts = hub.tts()
            pcm = tts.synthesize_all(text)
            cache[(text, rate)] = StreamResampler(tts.sample_rate, rate, dtype="int16")(pcm, last=True)
        return cache[(text, rate)]

    return make


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def stream(conn, wire: bytes, bytes_per_second: float, chunk_s: float = 0.04, speed: float = 1.0,
                 on_sent=None) -> None:
    """Append `wire` in chunks, paced at `speed` × real time (speed=0: as fast as possible).
    `on_sent(byte_offset_end, time)` is called after each append."""
    step = int(bytes_per_second * chunk_s)
    step -= step % 2
    t0 = time.perf_counter()
    for i in range(0, len(wire), step):
        await conn.input_audio_buffer.append(audio=b64(wire[i:i + step]))
        if on_sent is not None:
            on_sent(min(i + step, len(wire)), time.perf_counter())
        if speed:
            await asyncio.sleep(max(0.0, t0 + (i + step) / bytes_per_second / speed - time.perf_counter()))


def pcm_bytes(pcm: np.ndarray) -> bytes:
    return np.asarray(pcm, "<i2").tobytes()
