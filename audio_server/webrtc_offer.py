"""The body of a WebRTC offer request → a checked `Offer`, or an OpenAI-style 400 that says what is wrong.

Three shapes are accepted, as OpenAI's own endpoints take them:
- `Content-Type: application/sdp` — the raw SDP offer (the OpenAI WebRTC quick-start);
- `application/json` — `{"sdp": "...", "type": "offer", "session": {...}?, "model": "..."?}` (aiortc's
  examples and most browser samples);
- `multipart/form-data` — fields `sdp` and `session` (a JSON string), as `POST /v1/realtime/calls` takes.

The SDP gets a cheap structural check first (so the common mistakes get a precise message); whatever
aiortc then rejects is reported with aiortc's reason. Nothing here imports aiortc.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass

from audio_server.errors import APIError

MAX_OFFER_BYTES = 64 * 1024  # a browser offer is 2–6 KB; this bounds what the parser ever sees
_MEDIA = ("audio", "application")


@dataclass(frozen=True)
class Offer:
    sdp: str
    session: dict | None = None  # an initial session.update
    model: str | None = None
    want_json: bool = False  # answer as JSON {"sdp", "type"} rather than application/sdp


def bad_offer(message: str, param: str | None = "sdp", code: str = "invalid_offer") -> APIError:
    return APIError(400, message, code=code, param=param)


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_offer(f"the {what} is not UTF-8 text (byte {exc.start}); send the SDP offer as text") from None


def _session(value: object) -> dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise bad_offer(f"'session' is not valid JSON: {exc.msg} at position {exc.pos}", "session",
                            "invalid_session") from None
    if not isinstance(value, dict):
        raise bad_offer("'session' must be an object (a Realtime session configuration)", "session",
                        "invalid_session")
    return value


def parse_body(content_type: str, body: bytes, form: dict | None = None) -> Offer:
    """Request body → Offer. `form` holds the fields of a multipart body (already parsed by the caller)."""
    media = content_type.split(";")[0].strip().lower()
    if len(body) > MAX_OFFER_BYTES:
        raise APIError(413, f"the offer is larger than {MAX_OFFER_BYTES // 1024} KiB", code="offer_too_large",
                       param="sdp")
    if media == "application/sdp" or media == "text/plain":
        return Offer(check_sdp(_text(body, "body")))
    if media == "application/json":
        try:
            msg = json.loads(_text(body, "JSON body"))
        except json.JSONDecodeError as exc:
            raise bad_offer(f"the body is not valid JSON: {exc.msg} at position {exc.pos}", None,
                            "invalid_json") from None
        if not isinstance(msg, dict):
            raise bad_offer('the JSON body must be an object {"sdp": "...", "type": "offer"}', None)
        if msg.get("type", "offer") != "offer":
            raise bad_offer(f"'type' must be \"offer\" (got {msg.get('type')!r})", "type")
        if not isinstance(msg.get("sdp"), str):
            raise bad_offer("'sdp' must be a string holding the SDP offer", "sdp",
                            "missing_required_parameter" if "sdp" not in msg else "invalid_offer")
        model = msg.get("model")
        if model is not None and not isinstance(model, str):
            raise bad_offer("'model' must be a string", "model", "invalid_value")
        return Offer(check_sdp(msg["sdp"]), _session(msg.get("session")), model, want_json=True)
    if media == "multipart/form-data" and form is not None:
        sdp = form.get("sdp")
        if not isinstance(sdp, str):
            raise bad_offer("the form needs an 'sdp' field with the SDP offer", "sdp", "missing_required_parameter")
        return Offer(check_sdp(sdp), _session(form.get("session")))
    raise APIError(415, f"unsupported Content-Type {media or '(none)'!r}: send the offer as application/sdp, "
                        'as JSON {"sdp": ..., "type": "offer"}, or as multipart/form-data with an sdp field',
                   code="unsupported_media_type", param=None)


def check_sdp(sdp: str) -> str:
    """Structural checks with precise messages. Returns the SDP with CRLF line ends."""
    if "\x00" in sdp:
        raise bad_offer("the SDP contains a NUL character")
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines:
        raise bad_offer("the SDP offer is empty")
    if lines[0].strip() != "v=0":
        raise bad_offer(f"an SDP offer starts with 'v=0' (got {lines[0][:40]!r}); is this an SDP offer?")
    for n, line in enumerate(lines, 1):
        if len(line) < 2 or line[1] != "=" or line[0] not in string.ascii_lowercase:
            raise bad_offer(f"SDP line {n} is not 'x=value': {line[:60]!r}")
    media = [line[2:].split(" ", 1)[0] for line in lines if line.startswith("m=")]
    if not any(m in _MEDIA for m in media):
        raise bad_offer("the offer has no audio track and no data channel (m=audio or m=application); add the "
                        "microphone track or create the 'oai-events' data channel before createOffer()")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise bad_offer("the offer has no DTLS fingerprint (a=fingerprint); WebRTC media must be encrypted")
    if not any(line.startswith("a=ice-ufrag:") for line in lines) or \
            not any(line.startswith("a=ice-pwd:") for line in lines):
        raise bad_offer("the offer has no ICE credentials (a=ice-ufrag / a=ice-pwd)")
    return "\r\n".join(line.rstrip("\r") for line in lines) + "\r\n"
