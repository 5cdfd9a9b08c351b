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


def parse_control(text: str) -> tuple[dict | None, str | None]:
    """A JSON control message → (message, None) or (None, error text)."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON: {exc.msg} at position {exc.pos}"
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return None, "a control message must be a JSON object with a string 'type'"
    return msg, None
