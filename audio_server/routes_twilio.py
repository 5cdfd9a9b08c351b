"""Twilio voice webhook: `POST /twilio/voice` answers a call with TwiML that connects a bidirectional
Media Stream to our `/twilio/media` socket.

With `twilio_auth_token` configured, the request must carry a valid `X-Twilio-Signature` (HMAC-SHA1 over
the public URL and the POSTed parameters, checked with the official `twilio` library), so only Twilio can
start sessions. Query parameters `voice` and `instructions` on the webhook URL are passed on to the stream
as `<Parameter>`s and arrive in the `start` frame's `customParameters`.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from audio_server.auth import stream_token, stream_token_secret
from audio_server.errors import APIError

router = APIRouter()
_PASSED_PARAMETERS = ("voice", "instructions")


def _public_url(request: Request, public_base: str) -> str:
    """The URL Twilio called, as Twilio saw it (the signature covers it)."""
    if public_base:
        base = urlsplit(public_base)
        return urlunsplit((base.scheme, base.netloc, request.url.path, request.url.query, ""))
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    host = request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc))
    return urlunsplit((proto, host, request.url.path, request.url.query, ""))


@router.post("/twilio/voice")
async def twilio_voice(request: Request) -> Response:
    settings = request.app.state.settings
    form = await request.form(max_files=0, max_fields=100)
    params = {k: v for k, v in form.items() if isinstance(v, str)}
    url = _public_url(request, settings.public_url)
    if settings.twilio_auth_token:
        signature = request.headers.get("x-twilio-signature", "")
        if not signature or not RequestValidator(settings.twilio_auth_token).validate(url, params, signature):
            raise APIError(403, "invalid or missing X-Twilio-Signature", code="invalid_signature",
                           type="authentication_error")
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
    if params.get("CallSid"):
        stream.parameter(name="callSid", value=params["CallSid"])
    secret = stream_token_secret(settings)
    if secret:
        stream.parameter(name="token", value=stream_token(secret, params.get("CallSid", "")))
    response.append(connect)
    return Response(str(response), media_type="application/xml")
