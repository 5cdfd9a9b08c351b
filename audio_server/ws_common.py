"""What every streaming socket shares: an id for logs, serialised sends, protocol errors that never end
the session, and a registry of live sessions (for metrics and shutdown)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging

from fastapi import WebSocket
from starlette.websockets import WebSocketState

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class SocketSession:
    def __init__(self, ws: WebSocket, kind: str, metrics):
        self.ws, self.kind, self.metrics = ws, kind, metrics
        self.id = f"{kind}-{next(_ids)}"
        self._send_lock = asyncio.Lock()
        self.closed = False

    async def send_json(self, event: dict) -> None:
        await self._send(text=json.dumps(event))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data=data)

    async def _send(self, text: str | None = None, data: bytes | None = None) -> None:
        if self.closed:
            return
        async with self._send_lock:  # one frame at a time: model tasks and the receive loop both send
            try:
                if self.ws.application_state != WebSocketState.CONNECTED:
                    self.closed = True
                    return
                if text is not None:
                    await self.ws.send_text(text)
                else:
                    await self.ws.send_bytes(data)
            except Exception:  # peer gone: the receive loop will see the disconnect and clean up
                self.closed = True

    async def error(self, code: str, message: str, **extra) -> None:
        self.metrics.ws_errors.labels(self.kind, code).inc()
        log.info("[%s] protocol error %s: %s", self.id, code, message)
        await self.send_json({"type": "error", "code": code, "message": message, **extra})

    async def receive(self) -> tuple[str, object]:
        """Next client message as ("text", str) | ("bytes", bytes) | ("close", None)."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            self.closed = True
            return "close", None
        if message.get("bytes") is not None:
            return "bytes", message["bytes"]
        return "text", message.get("text") or ""


async def admit(ws: WebSocket, kind: str) -> bool:
    """Check key, origin and the session limit before accepting. A refusal closes the handshake (the
    client sees HTTP 403) with a reason; nothing else of the server is touched."""
    from audio_server.auth import key_ok, origin_ok, presented_key

    app = ws.app
    settings, metrics = app.state.settings, app.state.metrics
    if not key_ok(settings.api_keys, presented_key(ws.headers, ws.query_params)):
        metrics.ws_errors.labels(kind, "unauthorized").inc()
        await ws.close(code=1008, reason="missing or invalid API key")
        return False
    if not origin_ok(ws.headers.get("origin"), ws.headers.get("host"), settings.allowed_origins):
        metrics.ws_errors.labels(kind, "bad_origin").inc()
        await ws.close(code=1008, reason="origin not allowed")
        return False
    if app.state.open_sessions >= settings.max_sessions:
        metrics.ws_errors.labels(kind, "too_many_sessions").inc()
        await ws.close(code=1013, reason="server busy: too many sessions")
        return False
    return True


class SessionSlot:
    """Counts a session against `max_sessions` and the metrics gauge for as long as it is open."""

    def __init__(self, ws: WebSocket, kind: str):
        self.state, self.metrics, self.kind = ws.app.state, ws.app.state.metrics, kind

    def acquire(self) -> "SessionSlot":
        self.state.open_sessions += 1
        self.metrics.sessions.labels(self.kind).inc()
        self.metrics.sessions_total.labels(self.kind).inc()
        return self

    def release(self) -> None:
        self.state.open_sessions -= 1
        self.metrics.sessions.labels(self.kind).dec()


def parse_control(text: str) -> tuple[dict | None, str | None]:
    """A JSON control message → (message, None) or (None, error text)."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON: {exc.msg} at position {exc.pos}"
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return None, "a control message must be a JSON object with a string 'type'"
    return msg, None
