"""Request-size limit for every HTTP route, and the connection handle sockets need to cut a dead peer.

`RequestLimits` is plain ASGI middleware (outermost of ours):

- HTTP: a body larger than `max_request_bytes` is answered 413 `request_too_large` — at once when
  `Content-Length` says so, otherwise as soon as the streamed body passes the limit (the route sees
  `BodyTooLarge`, an HTTPException, so FastAPI and our handlers turn it into the same 413). Routes keep
  their own, smaller limits (`max_upload_bytes`, `max_speech_chars`).
- WebSocket: it records uvicorn's transport in the scope (`voxline.transport`) so a session can abort
  the TCP connection of a client that stops reading (a close frame would never get through).
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    code = "request_too_large"

    def __init__(self, limit: int):
        super().__init__(413, f"request body too large: the limit is {limit} bytes (max_request_bytes)")


class RequestLimits:
    def __init__(self, app: ASGIApp, max_request_bytes: int):
        self.app, self.max_bytes = app, max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope["voxline.transport"] = getattr(getattr(send, "__self__", None), "transport", None)
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _reply_413(send, self.max_bytes)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:  # BaseHTTPMiddleware reads bodies in a task group: it may come grouped
            if started or not too_large(exc):
                raise
            await _reply_413(send, self.max_bytes)


def too_large(exc: BaseException) -> bool:
    """Whether `BodyTooLarge` is anywhere in the exception's chain: its causes, contexts and group members.

    Iterative with a seen-set: Starlette's BaseHTTPMiddleware re-raises `exc from exc.__cause__ or
    exc.__context__`, and nested middleware can make that chain a cycle (a recursive walk then ended in
    RecursionError, a 500 and a reset connection)."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BodyTooLarge):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply_413(send: Send, limit: int) -> None:
    body = json.dumps({"error": {"message": BodyTooLarge(limit).detail, "type": "invalid_request_error",
                                 "param": None, "code": BodyTooLarge.code}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
