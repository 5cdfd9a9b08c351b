"""Fixtures for the WebRTC tests: a live server with short WebRTC timeouts (a vanished peer is noticed in
seconds), real recordings from tests/data, and checks that a call leaves nothing behind."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest

from bench.common import DATA, read
from tests.webrtc.client import to48k

IDLE_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def rtc_server(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    settings = replace(hub.settings, webrtc_idle_timeout_s=IDLE_TIMEOUT_S, webrtc_connect_timeout_s=15.0)
    app = create_app(settings, hub)
    hub.load_all()
    live = LiveServer(app).start()
    yield live
    live.stop()


def recording(name: str, lead_s: float = 0.0, tail_s: float = 0.0) -> np.ndarray:
    """A real recording from tests/data (16 kHz) → int16 48 kHz, leading silence trimmed to the speech onset,
    padded with `lead_s` / `tail_s` of silence."""
    audio = read(DATA / name)
    loud = np.flatnonzero(np.abs(audio) > 0.05)
    onset = max(0, int(loud[0]) - 160) if len(loud) else 0
    pcm = to48k(audio[onset:], 16000)
    return np.concatenate([np.zeros(int(48000 * lead_s), np.int16), pcm, np.zeros(int(48000 * tail_s), np.int16)])


def reference(name: str) -> str:
    from bench.common import transcripts

    return next(ref for path, ref in transcripts() if path == DATA / name)


def server_tasks(app) -> list[str]:
    """Names of the server loop's tasks that belong to a call or a realtime session."""
    loop = getattr(app.state, "realtime_loop", None)
    if loop is None:
        return []

    async def names():
        return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("webrtc:", "rt:"))]

    return asyncio.run_coroutine_threadsafe(names(), loop).result(10)


def wait_clean(server, baseline_sessions: int = 0, timeout: float = 30.0) -> float:
    """Until no call is registered, the session count is back to `baseline_sessions` and no call or session
    task is left. Returns how long that took."""
    from audio_server.routes_realtime import live_sessions
    from audio_server.webrtc_peer import peers

    app = server.app
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if not peers(app) and not live_sessions(app) and app.state.open_sessions == baseline_sessions \
                and not server_tasks(app):
            return time.perf_counter() - t0
        time.sleep(0.1)
    raise AssertionError(f"not clean after {timeout:.0f} s: peers={list(peers(app))}, sessions="
                         f"{list(live_sessions(app))}, open_sessions={app.state.open_sessions}, "
                         f"tasks={server_tasks(app)}")
