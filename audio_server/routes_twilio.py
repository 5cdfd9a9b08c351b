"""Twilio voice webhook: `POST /twilio/voice` (or GET, which Twilio sends when the number's webhook is
configured as HTTP GET: the call's parameters then come in the query string) answers a call with TwiML that connects a bidirectional
Media Stream to our `/twilio/media` socket.

Who may call it (checked before any work, like every other route):
- with `twilio_auth_token`: only Twilio. The request must carry a valid `X-Twilio-Signature` (HMAC-SHA1
  over the URL and the POSTed parameters — for a GET, over the URL with its query alone — checked with the official `twilio` library), and a signed request
  is accepted once: a replay of it within `REPLAY_WINDOW_S` is refused. The URL the signature covers is
  `public_url` when set, else the request's own scheme and Host; X-Forwarded-Proto/-Host count only with
  `trust_proxy_headers` (otherwise a caller could have a signature made for another host checked here);
- else with API keys: the key, as for any route (`Authorization: Bearer`, `X-API-Key`, `?api_key=`) or as
  the password of HTTP basic auth, which is how Twilio sends it: configure the webhook as
  `https://twilio:KEY@host/twilio/voice`. Twilio sends the credentials after a 401 that names the scheme
  (`WWW-Authenticate: Basic`), which is what a request without them gets;
- with neither, the service is open (loopback only).

With any of them, the TwiML hands the call a stream token (`audio_server.twilio_tokens`: bound to the
CallSid, expiring, single use) that the media socket requires. Query parameters `voice` and `instructions`
on the webhook URL are passed on to the stream as `<Parameter>`s and arrive in the `start` frame's
`customParameters`.
"""

from __future__ import annotations

import base64
import binascii
import time
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from audio_server.auth import key_ok, presented_key
from audio_server.errors import APIError, error_response
from audio_server.settings import Settings
from audio_server.twilio_tokens import SeenOnce, stream_tokens, tokens_required, valid_call_sid

router = APIRouter()
_PASSED_PARAMETERS = ("voice", "instructions", "language")
#: a signed webhook is accepted once within this window. Twilio's signature carries no timestamp, so a
#: request recorded by someone who can read the traffic replays after it; HTTPS is what keeps it unread
REPLAY_WINDOW_S = 3600.0


def _public_url(request: Request, settings: Settings) -> str:
    """The URL Twilio called, as Twilio saw it (the signature covers it)."""
    if settings.public_url:
        base = urlsplit(settings.public_url)
        return urlunsplit((base.scheme, base.netloc, request.url.path, request.url.query, ""))
    proto, host = request.url.scheme, request.headers.get("host", request.url.netloc)
    if settings.trust_proxy_headers:
        proto = request.headers.get("x-forwarded-proto", proto).split(",")[0].strip()
        host = request.headers.get("x-forwarded-host", host).split(",")[0].strip()
    return urlunsplit((proto, host, request.url.path, request.url.query, ""))


def _basic_auth_password(request: Request) -> str | None:
    """The password of `Authorization: Basic …` (Twilio sends the URL's credentials this way)."""
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


def _key_refusal(request: Request, settings: Settings) -> JSONResponse | None:
    key = presented_key(request.headers, request.query_params) or _basic_auth_password(request)
    if key_ok(settings.api_keys, key):
        return None
    response = error_response(401, "missing or invalid API key: configure the webhook as "
                              "https://twilio:KEY@host/twilio/voice (or send 'Authorization: Bearer KEY')",
                              code="invalid_api_key", type="authentication_error")
    response.headers["WWW-Authenticate"] = 'Basic realm="voxline", charset="UTF-8"'
    return response


def _check_signature(request: Request, settings: Settings, url: str, params: dict[str, str]) -> None:
    signature = request.headers.get("x-twilio-signature", "")
    if not signature or not RequestValidator(settings.twilio_auth_token).validate(url, params, signature):
        raise APIError(403, "invalid or missing X-Twilio-Signature", code="invalid_signature",
                       type="authentication_error")
    if not _seen_signatures(request.app).add(signature, time.time() + REPLAY_WINDOW_S):
        raise APIError(403, "this signed request was already received (a replay)", code="replayed_request",
                       type="authentication_error")


def _seen_signatures(app) -> SeenOnce:
    seen = getattr(app.state, "twilio_seen_signatures", None)
    if seen is None:
        seen = app.state.twilio_seen_signatures = SeenOnce()
    return seen


@router.api_route("/twilio/voice", methods=["GET", "POST"])
async def twilio_voice(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    if settings.twilio_auth_token:
        if not request.headers.get("x-twilio-signature"):  # refused before the body is read
            raise APIError(403, "invalid or missing X-Twilio-Signature", code="invalid_signature",
                           type="authentication_error")
    elif settings.api_keys:
        refusal = _key_refusal(request, settings)
        if refusal is not None:
            return refusal
    if request.method == "GET":  # the URL (query included) is all Twilio signs; there is no body to read
        params, signed = dict(request.query_params), {}
    else:
        form = await request.form(max_files=0, max_fields=100)
        params = signed = {k: v for k, v in form.items() if isinstance(v, str)}
    url = _public_url(request, settings)
    if settings.twilio_auth_token:
        _check_signature(request, settings, url, signed)
    call_sid = params.get("CallSid", "")
    if tokens_required(settings) and not valid_call_sid(call_sid):
        raise APIError(400, "CallSid is required (Twilio sends it with every call)", code="invalid_call_sid",
                       param="CallSid")
    parts = urlsplit(url)
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    stream_url = urlunsplit((ws_scheme, parts.netloc, "/twilio/media", "", ""))
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name in _PASSED_PARAMETERS:
        value = request.query_params.get(name)
        if value:
            stream.parameter(name=name, value=value[:1000])
    if call_sid:
        stream.parameter(name="callSid", value=call_sid)
    if tokens_required(settings):
        stream.parameter(name="token", value=stream_tokens(request.app).issue(call_sid))
    response.append(connect)
    return Response(str(response), media_type="application/xml")
