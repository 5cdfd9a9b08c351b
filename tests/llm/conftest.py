"""Fixtures for the chat LLM tests: a live server with the chat routes (no ASR/TTS preloading)."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

SMALL = "smollm2-135m-instruct"
DEFAULT = "qwen2.5-coder-0.5b-instruct"
VLM = "tiny-vlm-random"


def png_data_url(width: int = 24, height: int = 16, rgb: tuple[int, int, int] = (200, 30, 60)) -> str:
    """A real PNG (written by hand: signature, IHDR, IDAT, IEND) as a data: URL."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="session")
def llm_server():
    from audio_server.app import create_app
    from audio_server.live import LiveServer
    from audio_server.models import ModelHub
    from audio_server.settings import Settings

    hub = ModelHub(Settings())
    live = LiveServer(create_app(hub.settings, hub)).start()
    yield live
    live.stop()
    hub.close()


@pytest.fixture(scope="session")
def llm_client(llm_server):
    import openai

    return openai.OpenAI(base_url=llm_server.base_url + "/v1", api_key="unused-on-loopback", max_retries=0,
                         timeout=300)


@pytest.fixture(scope="session")
def small_engine():
    from runtime.llm import get_engine

    return get_engine(SMALL)
