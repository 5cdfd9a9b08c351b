"""`ws_common.serve` / `accepted`: what every socket route gets from them — admission before the accept, a
failing body answered with `internal_error` and 1011, a cancelled one closed with 1011, the route's own cleanup
before the close, and the session slot released whatever happened."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, WebSocket
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from audio_server.metrics import Metrics
from audio_server.settings import Settings
from audio_server.ws_common import CLOSE_INTERNAL, SocketSession, accepted, registry, serve


def socket_app(body, **serve_options) -> tuple[FastAPI, list[str]]:
    """An app with one socket route, `/s`, that serves `body`; the list records that the body ran."""
    app = FastAPI()
    app.state.settings = replace(Settings(), api_keys=("k",))
    app.state.metrics = Metrics()
    ran: list[str] = []

    async def recorded(session: SocketSession) -> None:
        ran.append(session.id)
        await body(session)

    @app.websocket("/s")
    async def route(ws: WebSocket) -> None:
        await serve(ws, "asr", recorded, **serve_options)

    return app, ran


def released(app) -> bool:
    reg = registry(app)
    return reg.open == 0 and not reg.sessions and not reg.per_key


async def fails(session: SocketSession) -> None:
    """Says ready, then fails on the client's first message."""
    await session.send_json({"type": "ready"})
    await session.receive()
    raise RuntimeError("a bug in the body")


def test_a_failing_body_gets_internal_error_then_1011_and_frees_its_slot():
    app, ran = socket_app(fails)
    with TestClient(app) as client, client.websocket_connect("/s?api_key=k") as ws:
        assert ws.receive_json() == {"type": "ready"}
        assert registry(app).open == 1  # held while the body runs
        ws.send_text("go")
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert error["type"] == "error" and error["code"] == "internal_error"
    assert closed.value.code == CLOSE_INTERNAL
    assert len(ran) == 1 and released(app)


def test_without_error_events_a_failure_is_only_closed_with_1011():
    app, _ = socket_app(fails, error_event=False)  # a wire with its own error shape (Realtime) or none (Twilio)
    with TestClient(app) as client, client.websocket_connect("/s?api_key=k") as ws:
        assert ws.receive_json() == {"type": "ready"}
        ws.send_text("go")
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == CLOSE_INTERNAL and released(app)


def test_a_refused_handshake_is_never_accepted_and_takes_no_slot():
    app, ran = socket_app(fails)
    with TestClient(app) as client:
        with pytest.raises(WebSocketDenialResponse) as refused:
            with client.websocket_connect("/s?api_key=wrong"):
                pass
    assert refused.value.status_code == 403 and refused.value.json()["error"]["code"] == "unauthorized"
    assert ran == [] and released(app)


def test_a_body_that_ends_normally_closes_with_1000():
    async def hello(session: SocketSession) -> None:
        await session.send_json({"type": "ready"})

    app, _ = socket_app(hello)
    with TestClient(app) as client, client.websocket_connect("/s?api_key=k") as ws:
        assert ws.receive_json() == {"type": "ready"}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1000 and released(app)


# ---- cancellation and cleanup order, on a stand-in socket ------------------------------------------------
class StandInSocket:
    """What `SocketSession` and `SessionSlot` read of a Starlette WebSocket; records accept and close."""

    def __init__(self, app, log: list[str]):
        self.app, self.log, self.scope = app, log, {}
        self.application_state = self.client_state = WebSocketState.CONNECTING

    async def accept(self, subprotocol=None):
        self.log.append(f"accept {subprotocol}")
        self.application_state = self.client_state = WebSocketState.CONNECTED

    async def close(self, code, reason=""):
        self.log.append(f"close {code}")

    async def send_text(self, text):
        self.log.append("send")


def test_a_cancelled_body_closes_1011_after_the_routes_own_cleanup_and_the_cancel_goes_on():
    app = SimpleNamespace(state=SimpleNamespace(settings=Settings(), metrics=Metrics()))
    log: list[str] = []

    async def scenario():
        session = SocketSession(StandInSocket(app, log), "tts", app.state.metrics)
        session.slot.acquire()

        async def route():
            async with accepted(session, subprotocol="realtime"):
                try:
                    await asyncio.sleep(3600)
                finally:
                    log.append("route cleanup")

        task = asyncio.create_task(route())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return session

    session = asyncio.run(scenario())
    assert log == ["accept realtime", "route cleanup", f"close {CLOSE_INTERNAL}"]
    assert session.end_code == CLOSE_INTERNAL and "cancelled" in session.end_reason
    assert released(app) and session.finished.is_set()
