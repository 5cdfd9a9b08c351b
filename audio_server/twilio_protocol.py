"""Twilio Media Streams wire format ⇄ typed events (PROTOCOLS.md §6.2). One serializer, no I/O.

Inbound JSON text frames: connected, start, media, dtmf, mark, stop (and fastrtc's ping). Outbound: media,
mark, clear, each carrying the streamSid. Audio is base64 μ-law 8 kHz mono; 20 ms = 160 bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from realtime.protocol import JSONTextError, load_json

FRAME_BYTES = 160  # 20 ms of μ-law at 8 kHz
MAX_FRAME_TEXT = 64 * 1024  # a media frame is ~300 bytes; anything this big is not Twilio


class TwilioProtocolError(ValueError):
    """A frame we cannot accept; `code` goes into logs and metrics."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


@dataclass(frozen=True)
class Media:
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes  # μ-law bytes


@dataclass(frozen=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True)
class Stop:
    stream_sid: str
    call_sid: str


@dataclass(frozen=True)
class Ping:
    pass


InboundEvent = Connected | Start | Media | Dtmf | Mark | Stop | Ping


def _obj(msg: dict, key: str) -> dict:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise TwilioProtocolError("missing_field", f"'{msg.get('event')}' frame needs an object '{key}'")
    return value


def _str(obj: dict, key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise TwilioProtocolError("missing_field", f"field '{key}' must be a string")
    return value


def parse(text: str) -> InboundEvent:
    """One inbound text frame → typed event, or TwilioProtocolError (never anything else)."""
    if len(text) > MAX_FRAME_TEXT:
        raise TwilioProtocolError("frame_too_large", f"frame of {len(text)} characters")
    try:
        msg = load_json(text)
    except JSONTextError as exc:
        raise TwilioProtocolError("invalid_json", f"malformed JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise TwilioProtocolError("invalid_frame", "a frame must be a JSON object with a string 'event'")
    event = msg["event"]
    sid = msg.get("streamSid") if isinstance(msg.get("streamSid"), str) else ""
    if event == "connected":
        return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
    if event == "start":
        start = _obj(msg, "start")
        fmt = start.get("mediaFormat") if isinstance(start.get("mediaFormat"), dict) else {}
        params = start.get("customParameters") if isinstance(start.get("customParameters"), dict) else {}
        tracks = start.get("tracks") if isinstance(start.get("tracks"), list) else ["inbound"]
        try:
            rate, channels = int(fmt.get("sampleRate", 8000)), int(fmt.get("channels", 1))
        except (TypeError, ValueError):
            raise TwilioProtocolError("invalid_media_format", "sampleRate and channels must be integers") from None
        return Start(stream_sid=_str(start, "streamSid", sid), call_sid=str(start.get("callSid", "")),
                     account_sid=str(start.get("accountSid", "")), tracks=tuple(str(t) for t in tracks),
                     custom_parameters={str(k): str(v) for k, v in params.items()},
                     encoding=str(fmt.get("encoding", "audio/x-mulaw")), sample_rate=rate, channels=channels)
    if event == "media":
        media = _obj(msg, "media")
        try:
            payload = base64.b64decode(_str(media, "payload"), validate=True)
        except (binascii.Error, ValueError):
            raise TwilioProtocolError("invalid_base64", "media.payload is not valid base64") from None
        try:
            chunk, ts = int(media.get("chunk", 0)), int(media.get("timestamp", 0))
        except (TypeError, ValueError):
            raise TwilioProtocolError("invalid_frame", "media.chunk and media.timestamp must be integers") from None
        return Media(sid, str(media.get("track", "inbound")), chunk, ts, payload)
    if event == "dtmf":
        digit = _str(_obj(msg, "dtmf"), "digit")
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise TwilioProtocolError("invalid_dtmf", f"unknown DTMF digit {digit!r}")
        return Dtmf(sid, digit)
    if event == "mark":
        return Mark(sid, _str(_obj(msg, "mark"), "name"))
    if event == "stop":
        stop = msg.get("stop") if isinstance(msg.get("stop"), dict) else {}
        return Stop(sid, str(stop.get("callSid", "")))
    if event == "ping":
        return Ping()
    raise TwilioProtocolError("unknown_event", f"unknown event {event!r}")


def media(stream_sid: str, mulaw: bytes) -> str:
    return json.dumps({"event": "media", "streamSid": stream_sid,
                       "media": {"payload": base64.b64encode(mulaw).decode("ascii")}})


def mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


def pong() -> str:
    return json.dumps({"event": "pong"})
