"""The OpenAI Realtime wire protocol: typed client events in, typed server events out, one serializer.

Inside the session everything is typed: client JSON is parsed and validated into the dataclasses below
(`parse_client_event`), and the session emits the typed events of `realtime.events`, named with GA event
names. `Serializer` (and `json_sink` around it) writes a server event in the connection's dialect — GA, or beta (`OpenAI-Beta: realtime=v1`): event names
(`response.output_audio.delta` → `response.audio.delta`, …), item content types (`output_audio` → `audio`),
the session object and the response object each have a beta shape. Client events are accepted in either
shape on every connection.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from realtime.config import SessionConfig, session_to_beta, session_to_ga
from realtime.events import ErrorEvent, ResponseInfo, ServerEvent
from realtime.items import Item, item_to_wire

MAX_APPEND_BYTES = 15 * 1024 * 1024  # decoded audio per input_audio_buffer.append (OpenAI's limit)


class Dialect(Enum):
    GA = "ga"
    BETA = "beta"


class ProtocolError(Exception):
    """A client event the session cannot take. Becomes an `error` event; the session carries on."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None,
                 event_id: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.code, self.param, self.event_id, self.type = message, code, param, event_id, type


# ---- client events --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientEvent:
    event_id: str | None


@dataclass(frozen=True)
class SessionUpdate(ClientEvent):
    session: dict


@dataclass(frozen=True)
class AudioAppend(ClientEvent):
    audio: bytes


@dataclass(frozen=True)
class AudioCommit(ClientEvent):
    pass


@dataclass(frozen=True)
class AudioClear(ClientEvent):
    pass


@dataclass(frozen=True)
class ItemCreate(ClientEvent):
    item: dict
    previous_item_id: str | None = None


@dataclass(frozen=True)
class ItemTruncate(ClientEvent):
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class ItemDelete(ClientEvent):
    item_id: str


@dataclass(frozen=True)
class ItemRetrieve(ClientEvent):
    item_id: str


@dataclass(frozen=True)
class ResponseCreate(ClientEvent):
    response: dict | None = None


@dataclass(frozen=True)
class ResponseCancel(ClientEvent):
    response_id: str | None = None


CLIENT_EVENT_TYPES = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                      "input_audio_buffer.clear", "conversation.item.create", "conversation.item.truncate",
                      "conversation.item.delete", "conversation.item.retrieve", "response.create", "response.cancel")


def _string(msg: dict, key: str, event_id: str | None, required: bool = True) -> str | None:
    value = msg.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"'{key}' must be a non-empty string", code="missing_required_parameter" if value is None
                            else "invalid_value", param=key, event_id=event_id)
    return value


class JSONTextError(ValueError):
    """Text that is not strict JSON we accept. The message says what is wrong."""


MAX_JSON_DEPTH = 64  # objects/arrays nested deeper than this are refused (later deep copies would recurse)


def _reject_constant(name: str) -> object:
    raise JSONTextError(f"{name} is not valid JSON (JSON numbers are finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONTextError(f"the number {text[:24]} is out of range")
    return value


def load_json(text: str | bytes) -> object:
    """Strict JSON text → Python value, or JSONTextError — never anything else.

    `json.loads` alone lets through NaN/Infinity and 1e999 (not JSON; echoed back in metadata they would make
    our own output invalid), and
    raises RecursionError for deep nesting and ValueError for integers past CPython's 4300-digit limit:
    found by tests/fuzz, each a crash of the session that received it."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except JSONTextError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONTextError(f"{exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise JSONTextError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError, TypeError) as exc:  # bad UTF-8; an integer too long to convert
        raise JSONTextError(str(exc).split(";")[0]) from None
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise JSONTextError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return value


def parse_client_event(text: str | bytes, max_audio_bytes: int = MAX_APPEND_BYTES) -> ClientEvent:
    """One WebSocket text message → a typed client event. Raises ProtocolError.
    `max_audio_bytes` caps the decoded audio of one `input_audio_buffer.append` (the server's setting)."""
    try:
        msg = load_json(text)
    except JSONTextError as exc:
        raise ProtocolError(f"the message is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(msg, dict):
        raise ProtocolError("an event must be a JSON object", code="invalid_event")
    event_id = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("an event needs a string 'type'", code="invalid_event", param="type", event_id=event_id)
    if kind == "session.update":
        session = msg.get("session")
        if not isinstance(session, dict):
            raise ProtocolError("'session' must be an object", param="session", event_id=event_id)
        return SessionUpdate(event_id, session)
    if kind == "input_audio_buffer.append":
        return AudioAppend(event_id, _decode_audio_b64(msg.get("audio"), event_id, "audio", max_audio_bytes))
    if kind == "input_audio_buffer.commit":
        return AudioCommit(event_id)
    if kind == "input_audio_buffer.clear":
        return AudioClear(event_id)
    if kind == "conversation.item.create":
        item = msg.get("item")
        if not isinstance(item, dict):
            raise ProtocolError("'item' must be an object", param="item", event_id=event_id)
        previous = msg.get("previous_item_id")
        if previous is not None and not isinstance(previous, str):
            raise ProtocolError("'previous_item_id' must be a string", param="previous_item_id", event_id=event_id)
        return ItemCreate(event_id, item, previous)
    if kind == "conversation.item.truncate":
        item_id = _string(msg, "item_id", event_id)
        content_index, audio_end_ms = msg.get("content_index", 0), msg.get("audio_end_ms")
        for key, value in (("content_index", content_index), ("audio_end_ms", audio_end_ms)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ProtocolError(f"'{key}' must be a non-negative integer", param=key, event_id=event_id)
        return ItemTruncate(event_id, item_id, content_index, audio_end_ms)  # type: ignore[arg-type]
    if kind == "conversation.item.delete":
        return ItemDelete(event_id, _string(msg, "item_id", event_id))  # type: ignore[arg-type]
    if kind == "conversation.item.retrieve":
        return ItemRetrieve(event_id, _string(msg, "item_id", event_id))  # type: ignore[arg-type]
    if kind == "response.create":
        response = msg.get("response")
        if response is not None and not isinstance(response, dict):
            raise ProtocolError("'response' must be an object", param="response", event_id=event_id)
        return ResponseCreate(event_id, response)
    if kind == "response.cancel":
        return ResponseCancel(event_id, _string(msg, "response_id", event_id, required=False))
    raise ProtocolError(f"unknown event type {kind!r}; supported: {', '.join(CLIENT_EVENT_TYPES)}",
                        code="unknown_event_type", param="type", event_id=event_id)


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def _decode_audio_b64(value: object, event_id: str | None, param: str, limit: int = MAX_APPEND_BYTES) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"'{param}' must be a base64 string", param=param, event_id=event_id)
    if len(value) > (limit + 2) // 3 * 4 + 4:
        raise ProtocolError(f"the audio is larger than {_size(limit)}; send it in smaller appends",
                            code="audio_too_large", param=param, event_id=event_id)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"'{param}' is not valid base64", code="invalid_base64", param=param,
                            event_id=event_id) from None
    if len(data) > limit:
        raise ProtocolError(f"the audio is larger than {_size(limit)}; send it in smaller appends",
                            code="audio_too_large", param=param, event_id=event_id)
    return data


def decode_item_audio(value: object, event_id: str | None) -> bytes:
    return _decode_audio_b64(value, event_id, "item.content.audio")


# ---- server events: the Realtime JSON wire ------------------------------------------------------------
# GA → beta event names; GA events mapped to None have no beta equivalent and are not sent to beta clients.
_BETA_NAMES: dict[str, str | None] = {
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


class Serializer:
    """Typed server events → JSON-ready dicts in one dialect, with fresh `event_id`s: the Realtime JSON wire
    (the WebSocket, and the WebRTC `oai-events` channel). Audio bytes become base64 here and only here."""

    def __init__(self, dialect: Dialect, session_id: str):
        self.dialect, self.session_id = dialect, session_id
        self._ids = itertools.count(1)

    @property
    def ga(self) -> bool:
        return self.dialect is Dialect.GA

    def __call__(self, event: ServerEvent) -> dict | None:
        name = event.type if self.ga else _BETA_NAMES.get(event.type, event.type)
        if name is None:
            return None
        out: dict = {"type": name, "event_id": f"event_{self.session_id[-6:]}{next(self._ids):06d}"}
        for key, value in event.data.items():
            if isinstance(value, Item):
                out[key] = item_to_wire(value, self.ga)
            elif isinstance(value, ResponseInfo):
                out[key] = value.to_wire(self.ga)
            elif isinstance(value, SessionConfig):
                out[key] = (session_to_ga if self.ga else session_to_beta)(value, self.session_id)
            elif isinstance(value, bytes):
                out[key] = base64.b64encode(value).decode()
            else:
                out[key] = value
        return out


def json_sink(send: Callable[[dict], Awaitable[None]], dialect: Dialect,
              session_id: str) -> Callable[[ServerEvent], Awaitable[None]]:
    """A session's event sink for a Realtime JSON client: each event serialized in `dialect`, then `send`
    (events without an equivalent in the dialect are not sent)."""
    serialize = Serializer(dialect, session_id)

    async def sink(event: ServerEvent) -> None:
        wire = serialize(event)
        if wire is not None:
            await send(wire)

    return sink


def error_event(exc: ProtocolError) -> ErrorEvent:
    return ErrorEvent({"type": exc.type, "code": exc.code, "message": exc.message, "param": exc.param,
                       "event_id": exc.event_id})
