"""OpenAI Realtime over WebSocket: `/v1/realtime?model=…` (the official SDK's `client.realtime.connect`).

The edge only does transport: admission (API key, origin, session limits), the dialect (a client sending
`OpenAI-Beta: realtime=v1` gets beta event names and shapes, any other gets GA), the receive loop, the
limits of `ws_common` (idle, session length, slow consumer: an error event, then close 1008) and the
drain on shutdown (`response.done{cancelled}`, close 1001), and cleanup. Everything else is `realtime/`: `RealtimeSession` decides, `SessionRunner` executes, and its
serializer writes each event in the connection's dialect. Event reference: `../shared/PROTOCOLS.md` §6.1.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, WebSocket

from audio_server.ws_common import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TIMEOUT_S,
    SessionSlot,
    SocketSession,
    admit,
    registry,
)
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
    hub, metrics, settings = app.state.hub, app.state.metrics, app.state.settings
    if not await admit(ws, "realtime"):
        return
    sock = SocketSession(ws, "realtime", metrics)
    slot = SessionSlot(ws, "realtime", sock).acquire()  # no await since admit: the limits hold
    runner: SessionRunner | None = None
    sessions = live_sessions(app)
    try:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
        dialect = dialect_of(ws)
        model = ws.query_params.get("model") or "voxline-realtime"
        loop = asyncio.get_running_loop()
        try:
            vad = await loop.run_in_executor(hub.executor, hub.vad)
            if hub.settings.pipeline != "unified":  # the unified model speaks through its own vocoder
                await loop.run_in_executor(hub.executor, hub.tts)
        except Exception:
            log.exception("[%s] models failed to load", sock.id)
            await sock.send_json({"type": "error", "event_id": "event_load", "error": {
                "type": "server_error", "code": "models_unavailable", "message": "speech models failed to load",
                "param": None, "event_id": None}})
            sock.end(CLOSE_INTERNAL, "speech models failed to load")
            return

        async def load_engine():
            return await loop.run_in_executor(None, chat_engine, app.state, model)

        async def send(wire: dict) -> None:
            code = wire["error"].get("code") if wire["type"] == "error" else None
            if code is not None and code != sock.end_error:  # an end reason is counted once, by end()
                metrics.ws_errors.labels("realtime", str(code)).inc()
            await sock.send_json(wire)

        def observe(latency: float, trigger: str) -> None:
            metrics.realtime_turn_latency.labels(trigger).observe(latency)

        def backlog(queued: int) -> None:
            sock.end(CLOSE_POLICY, f"client too slow: {queued} events wait unread (max_queued_events)",
                     "slow_consumer")

        session = RealtimeSession(new_id("sess"), vad, SessionConfig(model=model),
                                  max_buffer_seconds=settings.max_input_buffer_s,
                                  max_conversation_bytes=settings.max_conversation_bytes)
        runner = SessionRunner(session, hub, load_engine, send, dialect, on_turn_latency=observe,
                               max_append_bytes=settings.max_append_bytes,
                               max_queued_events=settings.max_queued_events, on_backlog=backlog)
        sessions[session.id] = runner
        app.state.realtime_loop = loop  # where sessions run (tests check that none leaves a task behind)
        log.info("[%s] open %s (%s, model %s)", sock.id, session.id, dialect.value, model)
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
            else:
                await runner.handle_text(payload)  # type: ignore[arg-type]
            await asyncio.sleep(0)  # a burst of queued messages must not starve the writer and other sessions
        await wind_down(runner, sock)
    except Exception:
        log.exception("[%s] session failed", sock.id)
    except asyncio.CancelledError:  # cancelled on the server (shutdown cut it, or an operator): 1011
        sock.end(CLOSE_INTERNAL, "the session was cancelled on the server")
        raise
    finally:
        if runner is not None:
            await runner.close()
            sessions.pop(runner.session.id, None)
        await sock.close(registry(app).remaining(CLOSE_TIMEOUT_S))
        slot.release()
        log.info("[%s] closed%s", sock.id, f" ({sock.end_reason})" if sock.end_reason else "")


async def wind_down(runner: SessionRunner, sock: SocketSession) -> None:
    """The session is ending (the socket is still open): say why, or on shutdown close what is in flight
    — `response.done{cancelled}`, failed transcriptions — and let the writer send it, within the drain's
    time. A slow consumer gets nothing more: it would not read it."""
    if sock.end_code == CLOSE_GOING_AWAY:
        runner.shutdown()
        await runner.drain(max(0.0, registry(sock.ws.app).remaining(CLOSE_TIMEOUT_S) - 0.5))
    elif sock.end_error in ("idle_timeout", "session_expired"):
        runner.protocol_error(ProtocolError(sock.end_reason, code=sock.end_error, type="invalid_request_error"))
        await runner.drain(CLOSE_TIMEOUT_S)
