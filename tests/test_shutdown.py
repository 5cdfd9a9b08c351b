"""Graceful shutdown on a real uvicorn server, in-process (`LiveServer.stop()`, what uvicorn does on a
signal) and as a subprocess sent SIGTERM: no new sessions are admitted, a realtime response in flight
ends with `response.done{status: cancelled}`, every socket closes with 1001, within `shutdown_timeout_s`;
a client that does not read cannot hold the shutdown up (it is cut at the deadline)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import websockets

from audio_server.live import free_port
from audio_server.metrics import Metrics
from audio_server.settings import Settings
from audio_server.ws_common import CLOSE_GOING_AWAY, SessionRegistry
from tests.test_reliability_support import (
    STORY,
    ByInstructions,
    NonReadingClient,
    RawClient,
    Script,
    fake_server,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
TEXT_ITEM = {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
    {"type": "input_text", "text": "Tell me a long story."}]}}
NO_VAD = {"type": "session.update", "session": {"type": "realtime", "instructions": "A",
                                                 "audio": {"input": {"turn_detection": None}}}}


def stop_in_background(live) -> tuple[threading.Thread, list[float]]:
    took: list[float] = []

    def stop():
        t0 = time.perf_counter()
        live.stop()
        took.append(time.perf_counter() - t0)

    thread = threading.Thread(target=stop)
    thread.start()
    return thread, took


def check_cancelled_then_1001(client: RawClient, response_id: str) -> None:
    done = [e for e in client.of("response.done") if e["response"]["id"] == response_id]
    assert len(done) == 1, client.types()[-10:]
    response = done[0]["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"]["error"]["code"] == "server_shutdown"
    after = client.events[client.events.index(done[0]) + 1:]
    assert not [e for e in after if e.get("response_id") == response_id], "events of the response after its done"
    assert client.close_code == CLOSE_GOING_AWAY, (client.close_code, client.close_reason)


def test_shutdown_cancels_responses_and_closes_every_socket_with_1001():
    engine = ByInstructions({"A": Script(STORY, delay_s=0.05)})
    live = fake_server(engine, shutdown_timeout_s=3.0)
    app = live.app

    async def scenario():
        talking = await RawClient.connect(live.ws_url + "/v1/realtime")
        idle = await RawClient.connect(live.ws_url + "/v1/realtime")
        asr = await RawClient.connect(live.ws_url + "/v1/asr/stream")
        tts = await RawClient.connect(live.ws_url + "/v1/tts/stream")
        await idle.wait("session.created")
        await asr.wait("ready")
        await tts.wait("ready")
        await talking.send(NO_VAD)
        await talking.wait("session.updated")
        await talking.send(TEXT_ITEM)
        await talking.send({"type": "response.create"})
        created = await talking.wait("response.created")
        await talking.wait("response.output_audio.delta")
        thread, took = stop_in_background(live)
        clients = (talking, idle, asr, tts)
        for c in clients:
            await c.closed(15)
        await asyncio.to_thread(thread.join, 30)
        return clients, created["response"]["id"], thread, took

    clients, response_id, thread, took = asyncio.run(scenario())
    talking, idle, asr, tts = clients
    print(f"\nshutdown took {took[0]:.2f} s (shutdown_timeout_s=3)")
    assert not thread.is_alive()
    check_cancelled_then_1001(talking, response_id)
    assert idle.close_code == CLOSE_GOING_AWAY and "shutting down" in idle.close_reason
    for c in (asr, tts):
        assert c.of("error")[-1]["code"] == "server_shutdown" and c.close_code == CLOSE_GOING_AWAY
    assert engine.open_streams == 0 and engine.closed_streams == 1
    assert app.state.open_sessions == 0 and not app.state.registry.sessions
    assert not app.state.registry.accepting
    with pytest.raises(httpx.ConnectError):  # the port is closed: nothing new is accepted
        httpx.get(live.base_url + "/healthz", timeout=5)


def test_a_client_that_does_not_read_cannot_hold_the_shutdown_up():
    engine = ByInstructions({"A": Script(tuple("x" * 8000 + " " for _ in range(3000)), delay_s=0.001)})
    live = fake_server(engine, shutdown_timeout_s=1.5, send_timeout_s=600.0)
    client = NonReadingClient(live.ws_url + "/v1/realtime")
    assert client.recv_json()["type"] == "session.created"
    client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "A",
                                                         "output_modalities": ["text"],
                                                         "audio": {"input": {"turn_detection": None}}}})
    client.send(TEXT_ITEM)
    client.send({"type": "response.create"})
    wait_until(lambda: engine.requests, 10, "the response to start")
    time.sleep(1.0)  # its text fills every buffer between us and the client
    thread, took = stop_in_background(live)
    during = None
    time.sleep(0.3)
    if thread.is_alive():  # still draining: nothing new gets in
        try:
            asyncio.run(websockets.connect(live.ws_url + "/v1/realtime", open_timeout=3).__aenter__())
            during = "accepted"
        except (OSError, websockets.InvalidStatus, TimeoutError) as exc:
            during = type(exc).__name__
    thread.join(30)
    print(f"\nshutdown with a client that never reads took {took[0]:.2f} s (shutdown_timeout_s=1.5); "
          f"a connection attempt during the drain: {during}")
    assert not thread.is_alive()
    assert during != "accepted"
    assert live.app.state.open_sessions == 0 and engine.open_streams == 0
    client.sock.close()


def test_drain_cuts_sessions_that_do_not_finish_in_time():
    """The registry's deadline: a session whose route never finishes is aborted and its task cancelled."""

    class Stuck:
        def __init__(self):
            self.id, self.finished, self.ended, self.aborted = "stuck-1", asyncio.Event(), [], False
            self.task = asyncio.create_task(asyncio.sleep(3600))

        def end(self, code, reason, error=None):
            self.ended.append(code)

        def abort(self):
            self.aborted = True

    async def scenario():
        reg = SessionRegistry(Settings(), Metrics())
        stuck = Stuck()
        reg.sessions[stuck.id] = stuck
        t0 = time.perf_counter()
        await reg.drain(0.2)
        took = time.perf_counter() - t0
        await asyncio.sleep(0)
        refusal = reg.refusal(None)
        await reg.drain(0.2)  # idempotent: returns at once
        return stuck, took, refusal

    stuck, took, refusal = asyncio.run(scenario())
    print(f"\ndrain with a stuck session returned after {took:.2f} s (timeout 0.2 s)")
    assert stuck.ended == [CLOSE_GOING_AWAY] and stuck.aborted and stuck.task.cancelled()
    assert refusal[:2] == (503, "server_shutting_down")


SERVER = r"""
import logging
import sys
from dataclasses import replace

from audio_server.app import create_app
from audio_server.lifecycle import serve
from audio_server.settings import Settings
from tests.realtime.fakes import FakeEngine, Script
from tests.test_reliability_support import STORY, FakeHub

logging.basicConfig(level=logging.INFO)  # as `voxline serve` does
settings = replace(Settings(), shutdown_timeout_s=3.0)
app = create_app(settings, FakeHub(settings))
app.state.chat_engine = FakeEngine(default=Script(STORY, delay_s=0.05))
serve(app, "127.0.0.1", int(sys.argv[1]), log_level="info")
"""


def test_sigterm_drains_a_subprocess_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.2)

        async def scenario():
            client = await RawClient.connect(f"ws://127.0.0.1:{port}/v1/realtime")
            await client.send(NO_VAD)
            await client.wait("session.updated")
            await client.send(TEXT_ITEM)
            await client.send({"type": "response.create"})
            created = await client.wait("response.created")
            await client.wait("response.output_audio.delta")
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            await client.closed(15)
            return client, created["response"]["id"], time.perf_counter() - t0

        client, response_id, took = asyncio.run(scenario())
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    print(f"\nSIGTERM → client closed after {took:.2f} s; server exit status {code}")
    check_cancelled_then_1001(client, response_id)
    assert code in (0, -signal.SIGTERM), log[-2000:]  # uvicorn re-raises the signal once it has shut down
    assert "draining 1 session(s)" in log and "Traceback" not in log, log[-2000:]
