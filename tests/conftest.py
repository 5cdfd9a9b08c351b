"""Shared fixtures: the real embedded models (loaded once per test run) and a live server on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

DATA = Path(__file__).parent / "data"


def load_transcripts() -> list[tuple[Path, str]]:
    rows = []
    for line in (DATA / "transcripts.tsv").read_text().splitlines():
        if line.strip():
            name, ref = line.split("\t")
            rows.append((DATA / name, ref))
    return rows


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = soundfile.read(path, dtype="float32")
    return audio, rate


@pytest.fixture(scope="session")
def hub():
    from audio_server.models import ModelHub
    from audio_server.settings import Settings

    settings = Settings(max_upload_bytes=3 * 1024 * 1024, max_ws_message_bytes=256 * 1024)
    hub = ModelHub(settings)
    yield hub
    hub.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app, port: int):
        import uvicorn

        self.app = app
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                ws_max_size=app.state.settings.max_ws_message_bytes * 4)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def gauge(self, name: str, **labels) -> float:
        value = self.app.state.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture(scope="session")
def server(hub):
    from audio_server.app import create_app

    app = create_app(hub.settings, hub)
    hub.load_all()
    live = LiveServer(app, _free_port())
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="session")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=120)


def run(coro):
    return asyncio.run(coro)
