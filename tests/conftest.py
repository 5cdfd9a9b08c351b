"""Shared fixtures: the real embedded models (loaded once per test run) and a live server on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bench.common import DATA, transcripts as load_transcripts  # noqa: E402,F401  (one reader of the test set)


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = soundfile.read(path, dtype="float32")
    return audio, rate


@pytest.fixture(scope="session")
def hub():
    from audio_server.models import ModelHub
    from audio_server.settings import Settings

    # server_vad: the tests time their silences to its 500 ms rule (the served default, semantic_vad, has its own
    # tests in tests/realtime/test_turn_default.py)
    settings = Settings(max_upload_bytes=3 * 1024 * 1024, max_ws_message_bytes=256 * 1024,
                        realtime_turn_detection="server_vad")
    hub = ModelHub(settings)
    yield hub
    hub.close()


@pytest.fixture(scope="session")
def server(hub):
    from audio_server.app import create_app

    from audio_server.live import LiveServer

    app = create_app(hub.settings, hub)
    hub.load_all()
    live = LiveServer(app).start()
    yield live
    live.stop()


@pytest.fixture(scope="session")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)


def run(coro):
    return asyncio.run(coro)
