"""The unified tiny pipeline behind the real `/v1/realtime` socket: an app built with
`Settings(preset="tiny", pipeline="unified")`, driven by the official `openai` SDK (GA and beta)."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import openai
import pytest

from audio_server.settings import Settings
from realtime.unified_turn import pcm16_wire
from tests.pipeline.conftest import clip
from tests.realtime.conftest import b64, stream


@pytest.fixture(scope="module")
def unified_server():
    from audio_server.app import create_app
    from audio_server.live import LiveServer
    from audio_server.models import ModelHub

    settings = Settings(preset="tiny", pipeline="unified", max_ws_message_bytes=1024 * 1024)
    hub = ModelHub(settings)
    hub.load_all()
    live = LiveServer(create_app(settings, hub)).start()
    yield live
    live.stop()
    hub.close()


class Events:
    def __init__(self, conn):
        self.conn, self.events = conn, []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self.events.append(await self.conn.recv())
        except Exception:
            pass

    async def wait(self, type_: str, after: int = 0, timeout: float = 60.0):
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and not self.task.done():
            for e in self.events[after:]:
                if e.type == type_:
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {type_}: {[e.type for e in self.events[after:]]}")

    def of(self, type_: str) -> list:
        return [e for e in self.events if e.type == type_]


def client_for(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url + "/v1", websocket_base_url=server.ws_url + "/v1",
                              api_key="unused-on-loopback", max_retries=0)


def test_ga_server_vad_turn_over_the_socket(unified_server):
    speech = np.concatenate([np.zeros(8000, np.float32), clip(), np.zeros(16000, np.float32)])

    async def scenario():
        async with client_for(unified_server).realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await events.wait("session.created")
            await stream(conn, pcm16_wire(speech), 48000, speed=0)  # server VAD (Silero) ends the turn
            done = await events.wait("response.done")
            return events, done

    events, done = asyncio.run(scenario())
    assert done.response.status == "completed", done.response
    tokens = done.response.usage.output_tokens
    wire = b"".join(base64.b64decode(d.delta) for d in events.of("response.output_audio.delta"))
    assert tokens > 0 and len(wire) == tokens // 5 * 2880 * 2  # pcm16 at 24 kHz: 2880 samples per group
    order = [e.type for e in events.events]
    assert order.index("input_audio_buffer.speech_stopped") < order.index("input_audio_buffer.committed") \
        < order.index("response.created") < order.index("response.output_audio.delta") < order.index("response.done")
    assert unified_server.gauge("voxline_realtime_turn_latency_seconds_count", trigger="server_vad") >= 1


def test_beta_manual_commit_with_g711_output(unified_server):
    async def scenario():
        manager = client_for(unified_server).beta.realtime.connect(model="gpt-4o-realtime-preview")
        async with manager as conn:
            events = Events(conn)
            await events.wait("session.created")
            await conn.session.update(session={"turn_detection": None, "output_audio_format": "g711_ulaw",
                                               "max_response_output_tokens": 42})
            await events.wait("session.updated")
            wire = pcm16_wire(clip("commands/001.wav"))
            for i in range(0, len(wire), 9600):
                await conn.input_audio_buffer.append(audio=b64(wire[i:i + 9600]))
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            done = await events.wait("response.done")
            return events, done

    events, done = asyncio.run(scenario())
    # max_response_output_tokens 42 → 40 audio ids (8 whole groups), a client limit: "incomplete"
    assert done.response.status == "incomplete" and done.response.usage.output_tokens == 40
    wire = b"".join(base64.b64decode(d.delta) for d in events.of("response.audio.delta"))
    assert len(wire) == 8 * 960  # μ-law: one byte per 8 kHz sample, 960 per 120 ms group
    assert not events.of("response.output_audio.delta")
    assert events.of("conversation.item.input_audio_transcription.completed")[0].transcript.startswith("[unified")



def test_models_lists_the_unified_pipeline(unified_server):
    import httpx

    cards = httpx.get(unified_server.base_url + "/v1/models", timeout=30).json()["data"]
    unified = [c for c in cards if c["id"] == "voxline-unified-tiny"]
    assert unified and "random weights" in unified[0]["description"]
