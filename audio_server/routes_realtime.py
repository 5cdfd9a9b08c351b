"""OpenAI Realtime over WebSocket: `/v1/realtime?model=…` (the official SDK's `client.realtime.connect`).

The edge only does transport: admission (API key, origin, session limits), the dialect (a client sending
`OpenAI-Beta: realtime=v1` gets beta event names and shapes, any other gets GA), the receive loop, the
limits of `ws_common` (idle, session length, slow consumer: an error event, then close 1008) and the
drain on shutdown (`response.done{cancelled}`, close 1001), and cleanup. Everything else is `realtime/`: a
`RealtimeHost` (its session decides, its runner executes) whose typed events `json_sink` writes in the
connection's dialect. Event reference: `../shared/PROTOCOLS.md` §6.1.

`open_host` / `close_host` / `speech_models` are how every transport (this socket, WebRTC, Twilio) gets its
session: one place for the models, the chat engine, the limits, the metrics and the registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import APIRouter, WebSocket

from audio_server.models import realtime_chat_engine
from audio_server.ws_common import CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TIMEOUT_S, SocketSession, serve
from realtime.config import SessionConfig, Speculation, TurnDetection
from realtime.host import EventSink, RealtimeHost, SessionLimits
from realtime.items import new_id
from realtime.protocol import Dialect, ProtocolError, json_sink

log = logging.getLogger(__name__)
router = APIRouter()


def dialect_of(ws: WebSocket) -> Dialect:
    beta = ws.headers.get("openai-beta", "").replace(" ", "").lower()
    return Dialect.BETA if "realtime=v1" in beta.split(",") else Dialect.GA


def live_sessions(app) -> dict[str, RealtimeHost]:
    """The app's open realtime sessions by id, whatever their transport (for metrics, tests and shutdown)."""
    sessions = getattr(app.state, "realtime_sessions", None)
    if sessions is None:
        sessions = app.state.realtime_sessions = {}
    return sessions


async def speech_models(hub):
    """Load what a realtime session needs before it opens, off the loop, and return the VAD. Piper only for
    the cascade: the unified model speaks through its own vocoder."""
    loop = asyncio.get_running_loop()
    vad = await loop.run_in_executor(hub.executor, hub.vad)
    if hub.pipeline != "unified":
        await loop.run_in_executor(hub.executor, hub.tts)
    return vad


def new_session_config(settings, model: str) -> SessionConfig:
    """A new session's configuration on this server, before the client changes any of it (every transport)."""
    return SessionConfig(model=model, turn_detection=TurnDetection(type=settings.realtime_turn_detection))


def open_host(app, session_id: str, vad, config: SessionConfig, sink: EventSink,
              on_backlog: Callable[[int], None]) -> RealtimeHost:
    """The realtime session of one connection, for every transport: the app's models, chat engine (loaded on
    first use), limits, turn-latency and speculation metrics. Registered in `live_sessions` until `close_host`."""
    settings, metrics = app.state.settings, app.state.metrics
    loop = asyncio.get_running_loop()
    model = config.model

    async def load_engine():
        return await loop.run_in_executor(None, realtime_chat_engine, app.state, model)

    def observe(latency: float, trigger: str) -> None:
        metrics.realtime_turn_latency.labels(trigger).observe(latency)

    def speculated(outcome: str) -> None:
        metrics.realtime_speculations.labels(outcome).inc()

    limits = SessionLimits(settings.max_input_buffer_s, settings.max_conversation_bytes, settings.max_append_bytes,
                           settings.max_queued_events)
    host = RealtimeHost(session_id, vad, config, app.state.hub, load_engine, sink, limits=limits,
                        on_turn_latency=observe, on_backlog=on_backlog, on_speculation=speculated,
                        speculation=Speculation(settings.realtime_speculative_ms,
                                                settings.realtime_speculative_responses))
    live_sessions(app)[host.id] = host
    app.state.realtime_loop = loop  # where sessions run (tests check that none leaves a task behind)
    return host


async def close_host(app, host: RealtimeHost) -> None:
    """Cancel and await everything of the session, and forget it."""
    try:
        await host.close()
    finally:
        live_sessions(app).pop(host.id, None)


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    offered = ws.scope.get("subprotocols") or []
    # A failure is logged and closed with 1011 but sends no `internal_error`: Realtime errors have their own shape.
    await serve(ws, "realtime", _converse, subprotocol="realtime" if "realtime" in offered else None,
                error_event=False)


async def _converse(sock: SocketSession) -> None:
    """One accepted connection: its models and `RealtimeHost`, then client events in until it ends."""
    ws = sock.ws
    app, hub, metrics = ws.app, ws.app.state.hub, ws.app.state.metrics
    dialect = dialect_of(ws)
    model = ws.query_params.get("model") or "voxline-realtime"
    try:
        vad = await speech_models(hub)
    except Exception:
        log.exception("[%s] models failed to load", sock.id)
        await sock.send_json({"type": "error", "event_id": "event_load", "error": {
            "type": "server_error", "code": "models_unavailable", "message": "speech models failed to load",
            "param": None, "event_id": None}})
        sock.end(CLOSE_INTERNAL, "speech models failed to load")
        return

    async def send(wire: dict) -> None:
        code = wire["error"].get("code") if wire["type"] == "error" else None
        if code is not None and code != sock.end_error:  # an end reason is counted once, by end()
            metrics.ws_errors.labels("realtime", str(code)).inc()
        await sock.send_json(wire)

    def backlog(queued: int) -> None:
        sock.end(CLOSE_POLICY, f"client too slow: {queued} events wait unread (max_queued_events)",
                 "slow_consumer")

    session_id = new_id("sess")
    host = open_host(app, session_id, vad, new_session_config(app.state.settings, model),
                     json_sink(send, dialect, session_id), backlog)
    log.info("[%s] open %s (%s, model %s)", sock.id, session_id, dialect.value, model)
    try:
        await host.start()
        async for kind, payload in sock.messages():
            if kind == "bytes":
                host.client_error(ProtocolError("binary frames are not part of the Realtime protocol; send "
                                                "JSON text events (audio as base64 in input_audio_buffer.append)",
                                                code="invalid_event"))
            else:
                await host.client_event(payload)  # type: ignore[arg-type]
            await asyncio.sleep(0)  # a burst of queued messages must not starve the writer and other sessions
        await wind_down(host, sock)
    finally:  # before the socket closes
        await close_host(app, host)
        log.info("[%s] closed%s", sock.id, f" ({sock.end_reason})" if sock.end_reason else "")


async def wind_down(host: RealtimeHost, sock: SocketSession) -> None:
    """The session is ending (the socket is still open): say why, or on shutdown close what is in flight
    — `response.done{cancelled}`, failed transcriptions — and let the writer send it, within the drain's
    time. A slow consumer gets nothing more: it would not read it."""
    if sock.end_code == CLOSE_GOING_AWAY:
        host.shutdown()
        await host.drain(max(0.0, sock.time_to_close() - 0.5))
    elif sock.end_error in ("idle_timeout", "session_expired"):
        host.client_error(ProtocolError(sock.end_reason, code=sock.end_error, type="invalid_request_error"))
        await host.drain(CLOSE_TIMEOUT_S)
