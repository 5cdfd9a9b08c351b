"""What every streaming socket shares: an id for logs, serialised sends, protocol errors that never end
the session, the limits every session lives under, and the registry of live sessions (for the session
limits, metrics and shutdown).

How a session ends, and what the client sees (the close code, and for most an error event first):

| why | error code | close |
|---|---|---|
| the client closed | — | (its own) |
| no message for `idle_timeout_s` | `idle_timeout` | 1008 |
| open longer than `max_session_s` | `session_expired` | 1008 |
| a send not read within `send_timeout_s`, or more than `max_queued_events` waiting | `slow_consumer` (no event: it would not be read) | 1008 |
| server shutdown | `server_shutdown` (realtime: `response.done` cancelled) | 1001 |
| a message larger than the server's WebSocket limit (uvicorn) | — | 1009 |
| the route failed (a bug), or was cancelled on the server | `internal_error` (not realtime, Twilio) | 1011 |

A session refused at the handshake gets an HTTP error with a JSON body: 403 (bad key or origin, or the
global `max_sessions`), 429 (`max_sessions_per_key`), 503 (shutting down).

A route is `serve(ws, kind, body)`: admission before any accept, then the body, with failure, cancellation,
the bounded close and the slot's release in one place (`open_session` + `accepted`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import WebSocket
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketState

from realtime.protocol import JSONTextError, load_json

log = logging.getLogger(__name__)
_ids = itertools.count(1)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutdown
CLOSE_POLICY = 1008  # a limit: idle, session length, slow consumer; bad key or origin
CLOSE_INTERNAL = 1011
CLOSE_BUSY = 1013  # a refusal where no HTTP error can be sent (Twilio route; servers without the extension)
CLOSE_TIMEOUT_S = 2.0  # longest a close handshake may wait for a client that does not read


class SocketSession:
    """One connection: serialised sends with a timeout (a client that stops reading is a slow consumer,
    not a reason to buffer forever), a receive that also returns when the session is ended from elsewhere
    (limits, shutdown) or the client goes idle, and a bounded close."""

    def __init__(self, ws: WebSocket, kind: str, metrics):
        self.ws, self.kind, self.metrics = ws, kind, metrics
        self.id = f"{kind}-{next(_ids)}"
        self._send_lock = asyncio.Lock()
        self.closed = False
        settings = ws.app.state.settings
        self.send_timeout: float = getattr(settings, "send_timeout_s", 10.0)
        self.idle_timeout: float | None = getattr(settings, "idle_timeout_s", 0.0) or None
        self.end_code: int | None = None  # set once by end(): why the session is over
        self.end_reason = ""
        self.end_error: str | None = None
        self.task = asyncio.current_task()
        self.finished = asyncio.Event()  # the route has cleaned up (what shutdown waits for)
        self._receiving: asyncio.Timeout | None = None
        self.errors = ErrorBudget(getattr(settings, "max_protocol_errors_per_s", 50))
        self.slot = SessionSlot(ws, kind, self)  # taken by `open_session` (or the route), released by `accepted`

    # ---- ending --------------------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.end_code is not None

    def end(self, code: int, reason: str, error: str | None = None) -> None:
        """Ask the session to end (the first reason wins). The route's receive returns ("close", None) at
        once; the route cleans up, and `close()` then uses this code and reason."""
        if self.end_code is not None:
            return
        self.end_code, self.end_reason, self.end_error = code, reason, error
        if error:
            self.metrics.ws_errors.labels(self.kind, error).inc()
        log.info("[%s] ending (%d): %s", self.id, code, reason)
        if self._receiving is not None:
            try:
                self._receiving.reschedule(asyncio.get_running_loop().time())
            except RuntimeError:  # the receive has just finished; the route checks `ended` next
                pass

    def time_to_close(self) -> float:
        """Seconds a last flush and the close may take: what is left of a shutdown's drain, else
        `CLOSE_TIMEOUT_S`."""
        return registry(self.ws.app).remaining(CLOSE_TIMEOUT_S)

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close with the end code (1000 if none). Bounded: a peer that does not read cannot hold the
        close handshake (or its socket) open; after `timeout` the connection is cut."""
        if WebSocketState.DISCONNECTED in (self.ws.application_state, self.ws.client_state):
            self.closed = True
            return
        self.closed = True
        try:
            async with asyncio.timeout(max(0.01, timeout)):
                await self.ws.close(code=self.end_code or CLOSE_NORMAL, reason=self.end_reason[:120])
        except TimeoutError:
            log.info("[%s] close not read within %.1f s: connection cut", self.id, timeout)
            self.abort()
        except Exception:  # already gone
            pass

    def abort(self) -> None:
        """Cut the TCP connection now (its buffered output is discarded)."""
        self.closed = True
        transport = self.ws.scope.get("voxline.transport")
        if transport is not None and not transport.is_closing():
            transport.abort()

    # ---- sending -------------------------------------------------------------------------------------
    async def send_json(self, event: dict) -> None:
        await self._send(text=json.dumps(event))

    async def send_text(self, text: str) -> None:
        await self._send(text=text)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data=data)

    async def _send(self, text: str | None = None, data: bytes | None = None) -> None:
        if self.closed:
            return
        async with self._send_lock:  # one frame at a time: model tasks and the receive loop both send
            if self.closed:
                return
            try:
                if self.ws.application_state != WebSocketState.CONNECTED:
                    self.closed = True
                    return
                async with asyncio.timeout(self.send_timeout):
                    if text is not None:
                        await self.ws.send_text(text)
                    else:
                        await self.ws.send_bytes(data)
            except TimeoutError:
                self.closed = True
                self.end(CLOSE_POLICY, f"client too slow: a message was not read within {self.send_timeout:g} s",
                         "slow_consumer")
            except Exception:  # peer gone: the receive loop will see the disconnect and clean up
                self.closed = True

    async def error(self, code: str, message: str, **extra) -> None:
        """Answer a bad message with an `error` event; the session carries on — unless this is one more
        than `max_protocol_errors_per_s` in a second: a flood, ended with `too_many_errors` (1008).
        Logged at most once a second per session, with the count of those not logged."""
        self.metrics.ws_errors.labels(self.kind, code).inc()
        flooded, unlogged = self.errors.count(time.monotonic())
        if unlogged is not None:
            more = f" (+{unlogged} not logged since the last line)" if unlogged else ""
            log.info("[%s] protocol error %s: %.200s%s", self.id, code, message, more)
        await self.send_json({"type": "error", "code": code, "message": message, **extra})
        if flooded and not self.ended:
            reason = f"more than {self.errors.limit} protocol errors in one second (max_protocol_errors_per_s)"
            await self.send_json({"type": "error", "code": "too_many_errors", "message": reason})
            self.end(CLOSE_POLICY, reason, "too_many_errors")

    # ---- receiving -----------------------------------------------------------------------------------
    async def receive(self) -> tuple[str, object]:
        """Next client message as ("text", str) | ("bytes", bytes) | ("close", None). "close" also when the
        session was ended (`end()`), or no message came for `idle_timeout` (the session is then ended with
        `idle_timeout`)."""
        # Messages already buffered are returned without suspending: a client that floods tiny messages
        # would hold the loop (every other session, /healthz) for as long as its burst lasts. Yield each time.
        await asyncio.sleep(0)
        if self.end_code is not None:
            return "close", None
        try:
            async with asyncio.timeout(self.idle_timeout) as window:
                self._receiving = window
                message = await self.ws.receive()
        except TimeoutError:
            self.end(CLOSE_POLICY, f"idle timeout: no message for {self.idle_timeout:g} s", "idle_timeout")
            return "close", None
        finally:
            self._receiving = None
        if message["type"] == "websocket.disconnect":
            self.closed = True
            return "close", None
        if message.get("bytes") is not None:
            return "bytes", message["bytes"]
        return "text", message.get("text") or ""

    async def messages(self) -> AsyncIterator[tuple[str, str | bytes]]:
        """The client's messages as ("text", str) | ("bytes", bytes), until `receive` says "close" (or the
        socket is already gone)."""
        while True:
            try:
                kind, payload = await self.receive()
            except RuntimeError:  # the socket is already gone
                return
            if kind == "close":
                return
            yield kind, payload  # type: ignore[misc]


class ErrorBudget:
    """Protocol errors of one session, counted per second: what may be logged, and when it is a flood."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window_start = float("-inf")
        self._in_window = 0
        self._last_logged = float("-inf")
        self._unlogged = 0

    def count(self, now: float) -> tuple[bool, int | None]:
        """One more error at `now` → (over the limit, None when not to be logged else how many were not)."""
        if now - self._window_start >= 1.0:
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        if now - self._last_logged < 1.0:
            self._unlogged += 1
            return self._in_window > self.limit, None
        unlogged, self._unlogged, self._last_logged = self._unlogged, 0, now
        return self._in_window > self.limit, unlogged


# ---- the registry: limits, session timers, shutdown --------------------------------------------------
class SessionRegistry:
    """Every open streaming session of one app. Admission checks the global and per-key limits here;
    each session gets a timer for `max_session_s`; `drain()` (shutdown) ends them all and waits."""

    def __init__(self, settings, metrics):
        self.settings, self.metrics = settings, metrics
        self.sessions: dict[str, SocketSession] = {}
        self.open = 0  # sessions holding a slot (a slot is taken before the socket is accepted)
        self.per_key: Counter[str] = Counter()
        self.accepting = True
        self.deadline: float | None = None  # monotonic time by which a drain must be over
        #: extra coroutines shutdown runs with the time left (e.g. peers that are not sockets)
        self.drain_hooks: list[Callable[[float], Awaitable[None]]] = []
        self._drained: asyncio.Event | None = None

    def refusal(self, key: str | None) -> tuple[int, str, str] | None:
        """Why a new session may not open now: (HTTP status, error code, message), or None."""
        s = self.settings
        if not self.accepting:
            return 503, "server_shutting_down", "the server is shutting down; connect again shortly"
        if self.open >= s.max_sessions:
            return 403, "too_many_sessions", f"server busy: {s.max_sessions} sessions are open (max_sessions)"
        limit = getattr(s, "max_sessions_per_key", 0)
        if key is not None and limit and self.per_key[key] >= limit:
            return 429, "too_many_sessions_for_key", (f"this API key already holds {limit} open sessions "
                                                      "(max_sessions_per_key); close one first")
        return None

    def remaining(self, default: float) -> float:
        """Seconds left of the current drain, or `default` when not draining."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - time.monotonic())

    async def drain(self, timeout: float) -> None:
        """Stop admitting, end every session with 1001 and wait up to `timeout` for them to clean up;
        then cut what is left. Idempotent: a second call waits for the first."""
        if self._drained is not None:
            await self._drained.wait()
            return
        self._drained = asyncio.Event()
        self.accepting = False
        self.deadline = time.monotonic() + timeout
        sessions = list(self.sessions.values())
        log.info("draining %d session(s), up to %.1f s", len(sessions), timeout)
        for sock in sessions:
            sock.end(CLOSE_GOING_AWAY, "server shutting down", "server_shutdown")
        waits = [asyncio.ensure_future(s.finished.wait()) for s in sessions]
        waits += [asyncio.ensure_future(hook(timeout)) for hook in self.drain_hooks]
        if waits:
            done, pending = await asyncio.wait(waits, timeout=timeout)
            for fut in pending:
                fut.cancel()
        for sock in list(self.sessions.values()):  # stragglers: cut the connection, cancel the handler
            log.warning("[%s] did not finish within the shutdown timeout: cut", sock.id)
            sock.abort()
            if sock.task is not None and not sock.task.done():
                sock.task.cancel()
        self._drained.set()


def registry(app) -> SessionRegistry:
    reg = getattr(app.state, "registry", None)
    if reg is None:
        reg = app.state.registry = SessionRegistry(app.state.settings, app.state.metrics)
    return reg


async def admit(ws: WebSocket, kind: str, *, key_required: bool = True) -> bool:
    """Check key, origin and the session limits before accepting. A refusal answers the handshake with an
    HTTP error and a JSON body saying why (`{"error": {"code", "message", "type"}}`); nothing else of
    the server is touched. Take the slot right after, with no await between (`open_session` does both).
    `key_required=False` is for a transport whose client cannot send a key and authenticates in its first
    message instead (Twilio's stream token): it takes its slot only once that is verified."""
    from audio_server.auth import key_ok, presented_key
    from audio_server.http_security import browser_policy, browser_refusal

    app = ws.app
    settings = app.state.settings
    key = presented_key(ws.headers, ws.query_params)
    if key_required and not key_ok(settings.api_keys, key):
        return await _refuse(ws, kind, 403, "unauthorized", "missing or invalid API key: send "
                             "'Authorization: Bearer KEY', 'X-API-Key: KEY' or ?api_key=KEY", "authentication_error")
    browser = browser_refusal(ws.scope, browser_policy(app))  # Origin and Host (DNS rebinding), never Host as origin
    if browser is not None:
        return await _refuse(ws, kind, 403, browser.code, browser.message, "invalid_request_error")
    ws.scope["voxline.api_key"] = key if settings.api_keys and key_required else None
    refused = registry(app).refusal(ws.scope["voxline.api_key"])
    if refused is not None:
        status, code, message = refused
        return await _refuse(ws, kind, status, code, message, "server_error" if status != 429 else "rate_limit_error")
    return True


class _DenialIsAHandshake(logging.Filter):
    """uvicorn 0.54's WebSocket implementation logs "ASGI callable returned without completing handshake."
    at ERROR after every handshake refused with an HTTP response (the denial-response extension), though
    the refusal was sent correctly. Our socket routes either accept or refuse, so the line is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


logging.getLogger("uvicorn.error").addFilter(_DenialIsAHandshake())


async def _refuse(ws: WebSocket, kind: str, status: int, code: str, message: str, type_: str) -> bool:
    ws.app.state.metrics.ws_errors.labels(kind, code).inc()
    body = {"error": {"message": message, "type": type_, "code": code, "param": None}}
    try:
        await ws.send_denial_response(JSONResponse(body, status_code=status))
    except RuntimeError:  # the server cannot send an HTTP response here: a plain refusal (403)
        await ws.close(code=CLOSE_POLICY if status != 503 else CLOSE_BUSY, reason=message[:120])
    return False


class SessionSlot:
    """Counts a session against `max_sessions` (and its API key's `max_sessions_per_key`) and the
    metrics gauge for as long as it is open. With a `SocketSession`, also registers it for shutdown and
    arms its `max_session_s` timer. `release()` is the last thing a route does."""

    def __init__(self, ws: WebSocket, kind: str, sock: SocketSession | None = None):
        self.state, self.metrics, self.kind, self.sock = ws.app.state, ws.app.state.metrics, kind, sock
        self.registry = registry(ws.app)
        self.key = ws.scope.get("voxline.api_key")
        self._timer: asyncio.TimerHandle | None = None
        self._held = False

    def acquire(self) -> "SessionSlot":
        reg = self.registry
        reg.open += 1
        if self.key is not None:
            reg.per_key[self.key] += 1
        self.state.open_sessions = reg.open
        self.metrics.sessions.labels(self.kind).inc()
        self.metrics.sessions_total.labels(self.kind).inc()
        self._held = True
        if self.sock is not None:
            self.attach(self.sock)
        return self

    def attach(self, sock: SocketSession) -> None:
        """Register the connection (shutdown ends it) and start its session-length timer."""
        self.sock = sock
        self.registry.sessions[sock.id] = sock
        limit = getattr(self.state.settings, "max_session_s", 0.0)
        if limit:
            self._timer = asyncio.get_running_loop().call_later(
                limit, sock.end, CLOSE_POLICY, f"session expired: sessions last at most {limit:g} s (max_session_s)",
                "session_expired")
        if not self.registry.accepting:  # shutdown began while this one was being set up
            sock.end(CLOSE_GOING_AWAY, "server shutting down", "server_shutdown")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        reg = self.registry
        reg.open -= 1
        if self.key is not None:
            reg.per_key[self.key] -= 1
            if reg.per_key[self.key] <= 0:
                del reg.per_key[self.key]
        self.state.open_sessions = reg.open
        self.metrics.sessions.labels(self.kind).dec()
        if self._timer is not None:
            self._timer.cancel()
        if self.sock is not None:
            reg.sessions.pop(self.sock.id, None)
            self.sock.finished.set()


# ---- a route's session, from the handshake to the close ----------------------------------------------
async def open_session(ws: WebSocket, kind: str, *, key_required: bool = True,
                       take_slot: bool = True) -> SocketSession | None:
    """Admit the handshake (`admit`), then the connection's `SocketSession` with its `SessionSlot` taken
    (no await between: the limits hold); None when refused (the client has its HTTP error, nothing was
    accepted). `take_slot=False` leaves `session.slot` for the route to acquire once the client has
    authenticated (Twilio's start frame). Serve the session inside `accepted(session)`."""
    if not await admit(ws, kind, key_required=key_required):
        return None
    session = SocketSession(ws, kind, ws.app.state.metrics)
    if take_slot:
        session.slot.acquire()
    return session


@asynccontextmanager
async def accepted(session: SocketSession, *, subprotocol: str | None = None,
                   error_event: bool = True) -> AsyncIterator[SocketSession]:
    """Accept the socket and run the route's body; whatever happens, close within the drain's time and
    release the slot. A body that raises is logged and ended with 1011 (`internal_error` first, unless
    `error_event=False`: a wire with its own error shape, or none); one cancelled on the server (shutdown
    cut it, or an operator) is ended with 1011 and the cancellation goes on. A route's own cleanup that must
    come before the close (its model streams, its tasks) goes in a `try/finally` inside the body."""
    try:
        await session.ws.accept(subprotocol=subprotocol)
        yield session
    except Exception:
        log.exception("[%s] session failed", session.id)
        if error_event:
            await session.error("internal_error", "the session failed; see server logs")
        session.end(CLOSE_INTERNAL, "internal error")
    except asyncio.CancelledError:
        session.end(CLOSE_INTERNAL, "the session was cancelled on the server")
        raise
    finally:
        await session.close(session.time_to_close())
        session.slot.release()


async def serve(ws: WebSocket, kind: str, body: Callable[[SocketSession], Awaitable[None]], *,
                key_required: bool = True, take_slot: bool = True, subprotocol: str | None = None,
                error_event: bool = True) -> None:
    """A socket route in one call: `open_session`, then `body(session)` inside `accepted`."""
    session = await open_session(ws, kind, key_required=key_required, take_slot=take_slot)
    if session is None:  # refused at the handshake
        return
    async with accepted(session, subprotocol=subprotocol, error_event=error_event):
        await body(session)


def parse_control(text: str) -> tuple[dict | None, str | None]:
    """A JSON control message → (message, None) or (None, error text). Never raises (tests/fuzz)."""
    try:
        msg = load_json(text)
    except JSONTextError as exc:
        return None, f"malformed JSON: {exc}"
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return None, "a control message must be a JSON object with a string 'type'"
    return msg, None
