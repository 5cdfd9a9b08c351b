"""OpenAI Realtime over WebSocket: `/v1/realtime?model=…` (the official SDK's `client.realtime.connect`).

The edge only does transport: admission (API key, origin, session limit), the dialect (a client sending
`OpenAI-Beta: realtime=v1` gets beta event names and shapes, any other gets GA), the receive loop, and
cleanup. Everything else is `realtime/`: `RealtimeSession` decides, `SessionRunner` executes, and its
serializer writes each event in the connection's dialect. Event reference: `../shared/PROTOCOLS.md` §6.1.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket

from audio_server.ws_common import SessionSlot, SocketSession, admit
from realtime.config import SessionConfig
from realtime.engine_provider import chat_engine
from realtime.items import new_id
from realtime.protocol import Dialect, ProtocolError
from realtime.runner import SessionRunner
from realtime.session import RealtimeSession

log = logging.getLogger(__name__)
router = APIRouter()


def dialect_of(ws: WebSocket) -> Dialect:
    beta = ws.headers.get("openai-beta", "").replace(" ", "").lower()
    return Dialect.BETA if "realtime=v1" in beta.split(",") else Dialect.GA


def live_sessions(app) -> dict[str, SessionRunner]:
    """The app's open realtime sessions by id (for metrics, tests and shutdown)."""
    sessions = getattr(app.state, "realtime_sessions", None)
    if sessions is None:
        sessions = app.state.realtime_sessions = {}
    return sessions


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    app = ws.app
    hub, metrics = app.state.hub, app.state.metrics
    if not await admit(ws, "realtime"):
        return
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    sock = SocketSession(ws, "realtime", metrics)
    dialect = dialect_of(ws)
    model = ws.query_params.get("model") or "voxline-realtime"
    loop = asyncio.get_running_loop()
    try:
        vad = await loop.run_in_executor(hub.executor, hub.vad)
        await loop.run_in_executor(hub.executor, hub.tts)
    except Exception:
        log.exception("[%s] models failed to load", sock.id)
        await sock.send_json({"type": "error", "event_id": "event_load", "error": {
            "type": "server_error", "code": "models_unavailable", "message": "speech models failed to load",
            "param": None, "event_id": None}})
        await ws.close(code=1011)
        return

    async def load_engine():
        return await loop.run_in_executor(None, chat_engine, app.state, model)

    async def send(wire: dict) -> None:
        if wire["type"] == "error":
            metrics.ws_errors.labels("realtime", str(wire["error"].get("code"))).inc()
        await sock.send_json(wire)

    def observe(latency: float, trigger: str) -> None:
        metrics.realtime_turn_latency.labels(trigger).observe(latency)

    session = RealtimeSession(new_id("sess"), vad, SessionConfig(model=model))
    runner = SessionRunner(session, hub, load_engine, send, dialect, on_turn_latency=observe)
    sessions = live_sessions(app)
    sessions[session.id] = runner
    app.state.realtime_loop = loop  # where sessions run (tests check that none leaves a task behind)
    slot = SessionSlot(ws, "realtime").acquire()
    log.info("[%s] open %s (%s, model %s)", sock.id, session.id, dialect.value, model)
    try:
        await runner.start()
        while True:
            try:
                kind, payload = await sock.receive()
            except RuntimeError:  # the socket is already gone
                break
            if kind == "close":
                break
            if kind == "bytes":
                runner.protocol_error(ProtocolError("binary frames are not part of the Realtime protocol; send "
                                                    "JSON text events (audio as base64 in input_audio_buffer.append)",
                                                    code="invalid_event"))
                continue
            await runner.handle_text(payload)  # type: ignore[arg-type]
    except Exception:
        log.exception("[%s] session %s failed", sock.id, session.id)
    finally:
        await runner.close()
        sessions.pop(session.id, None)
        slot.release()
        log.info("[%s] closed %s", sock.id, session.id)
        if not sock.closed:
            try:
                await ws.close()
            except Exception:
                pass
