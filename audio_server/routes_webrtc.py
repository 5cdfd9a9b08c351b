"""Browser voice chat over WebRTC: SDP offer in, SDP answer out (OpenAI's WebRTC flow).

- `POST /v1/realtime/webrtc` (aliases `POST /webrtc/offer`, `POST /v1/realtime/calls`): a new call. The offer
  comes as `application/sdp` (answered `201` with `application/sdp` and `Location: /v1/realtime/calls/{id}`),
  as JSON `{"sdp", "type": "offer", "session"?, "model"?}` (answered `200` JSON `{"sdp", "type": "answer",
  "id"}`), or as multipart `sdp` + `session`. `?model=` picks the LLM as on `/v1/realtime`.
- `POST /v1/realtime/webrtc/{id}` (alias `/webrtc/offer/{id}`): a new offer on an open call (renegotiation).
- `DELETE /v1/realtime/webrtc/{id}` (alias `POST /v1/realtime/calls/{id}/hangup`): hang up.
- `GET /v1/realtime/webrtc/config`: the ICE servers a page should use (`VOXLINE_ICE_SERVERS`).

Every offer's ICE candidates are screened first (`webrtc_candidates`: the server sends checks only where it
may). A call belongs to the key that created it: renegotiation and hang-up with another key hear "no call",
exactly as for an id that never existed (they learn nothing about other keys' calls).

Admission is the sockets' (API key — already enforced by the app's middleware for these paths — browser
origin, then the session registry of `ws_common`: `max_sessions` across every transport, `max_sessions_per_key`,
no new calls while shutting down), answered with OpenAI-shaped errors and the sockets' status codes.
The call itself is `audio_server.webrtc_peer.WebRTCPeer`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from audio_server.auth import key_ok, presented_key
from audio_server.errors import APIError, error_response
from audio_server.routes_realtime import dialect_of, new_session_config, speech_models
from audio_server.webrtc_candidates import CandidatePolicy, screen_candidates
from audio_server.webrtc_config import parse_ice_servers
from audio_server.webrtc_offer import Offer, bad_offer, parse_body
from audio_server.webrtc_peer import KIND, WebRTCPeer, close_all, ended_calls, peers
from audio_server.ws_common import SessionSlot, registry
from realtime.config import ConfigError, SessionConfig, apply_update

log = logging.getLogger(__name__)
router = APIRouter()


def _refuse(request: Request, status: int, code: str, message: str, type: str) -> JSONResponse:
    request.app.state.metrics.ws_errors.labels(KIND, code).inc()
    response = error_response(status, message, code=code, type=type)
    if code.startswith("too_many") or status == 503:
        response.headers["Retry-After"] = "5"
    return response


def _admission_problem(request: Request) -> JSONResponse | None:
    """The sockets' admission (`ws_common.admit`) for an HTTP offer: key, origin, then the session
    registry's limits (global, per key, shutting down) with the same status codes."""
    app = request.app
    settings = app.state.settings
    key = presented_key(request.headers, request.query_params)
    if not key_ok(settings.api_keys, key):
        return _refuse(request, 401, "invalid_api_key", "missing or invalid API key: send 'Authorization: Bearer KEY'",
                       "authentication_error")
    # Origin and Host were checked before any route ran (http_security.BrowserGuard: 403 bad_origin / bad_host).
    request.scope["voxline.api_key"] = key if settings.api_keys else None  # what SessionSlot counts per key
    refused = registry(app).refusal(request.scope["voxline.api_key"])
    if refused is not None:
        status, code, message = refused
        return _refuse(request, status, code, message, "rate_limit_error" if status == 429 else "server_error")
    return None


async def _read_offer(request: Request) -> Offer:
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    form = None
    if content_type.lower().startswith("multipart/form-data"):
        try:
            parsed = await request.form()
        except Exception as exc:
            raise bad_offer(f"the multipart body could not be read: {exc}", None) from None
        form = {k: v for k, v in parsed.items() if isinstance(v, str)}
    offer = parse_body(content_type, body, form)
    sdp, dropped = screen_candidates(offer.sdp, CandidatePolicy.from_settings(request.app.state.settings))
    if dropped:
        log.info("webrtc: offer: %d ICE candidate(s) dropped: %s%s", len(dropped), "; ".join(dropped[:4]),
                 " …" if len(dropped) > 4 else "")
    return replace(offer, sdp=sdp)


def _owner(request: Request) -> str | None:
    """A digest of the API key this request presents (None when the server runs without keys): a call keeps
    its creator's, never the key itself."""
    if not request.app.state.settings.api_keys:
        return None
    key = presented_key(request.headers, request.query_params) or ""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _same_owner(a: str | None, b: str | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and hmac.compare_digest(a, b))


def _session_config(offer: Offer, request: Request) -> SessionConfig:
    model = offer.model or request.query_params.get("model") or "voxline-realtime"
    config = new_session_config(request.app.state.settings, model)
    if offer.session:
        try:
            config = apply_update(config, offer.session)
        except ConfigError as exc:
            raise APIError(400, exc.message, code=exc.code, param=f"session.{exc.param}" if exc.param else "session")
    return config


def _answer(offer: Offer, peer: WebRTCPeer, sdp: str, status: int) -> Response:
    location = f"/v1/realtime/calls/{peer.id}"
    if offer.want_json:
        return JSONResponse({"sdp": sdp, "type": "answer", "id": peer.id, "session_id": peer.session.id},
                            status_code=200, headers={"Location": location})
    return Response(sdp, status_code=status, media_type="application/sdp", headers={"Location": location})


@router.post("/v1/realtime/webrtc")
@router.post("/webrtc/offer", include_in_schema=False)
@router.post("/v1/realtime/calls", include_in_schema=False)
async def new_call(request: Request) -> Response:
    app = request.app
    problem = _admission_problem(request)
    if problem is not None:
        return problem
    offer = await _read_offer(request)
    config = _session_config(offer, request)
    # From here to acquire() nothing awaits: two offers racing for the last slot cannot both get it.
    problem = _admission_problem(request)
    if problem is not None:
        return problem
    slot = SessionSlot(request, KIND).acquire()
    peer = None
    try:
        try:
            vad = await speech_models(app.state.hub)
        except Exception:
            log.exception("webrtc: speech models failed to load")
            raise APIError(503, "the speech models failed to load", code="models_unavailable",
                           type="server_error") from None
        peer = WebRTCPeer(app, vad, config, dialect_of(request), slot, owner=_owner(request))
        peers(app)[peer.id] = peer
        sdp = await peer.answer(offer.sdp)
    except APIError:
        await _discard(peer, slot, "models unavailable")
        raise
    except Exception as exc:  # aiortc refused the offer (its parser and negotiation raise many kinds)
        await _discard(peer, slot, "bad offer")
        log.info("webrtc: offer refused: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        app.state.metrics.ws_errors.labels(KIND, "invalid_offer").inc()
        raise bad_offer(f"the SDP offer was not accepted: {_reason(exc)}") from None
    except BaseException:  # the request was cancelled (client gone): free the slot, then let it go
        await asyncio.shield(_discard(peer, slot, "request cancelled"))
        raise
    log.info("[%s] answered (session %s, %s dialect)", peer.id, peer.session.id, peer.dialect.value)
    return _answer(offer, peer, sdp, 201)


def _reason(exc: Exception) -> str:
    """aiortc's own words when it has them (ValueError, OperationError…); a parser's bare KeyError or
    AssertionError becomes "it could not be parsed" with the detail."""
    text = str(exc)
    if isinstance(exc, (KeyError, IndexError, AssertionError, TypeError, AttributeError)) or not text:
        text = f"it could not be parsed ({type(exc).__name__}{': ' + text if text else ''})"
    return text if len(text) < 300 else text[:300] + "…"


async def _discard(peer: WebRTCPeer | None, slot: SessionSlot, reason: str) -> None:
    if peer is not None:
        await peer.close(reason)  # releases the slot and leaves the registries
    else:
        slot.release()


def _open_call(request: Request, call_id: str) -> WebRTCPeer:
    """The caller's own open call; another key's call is answered as if it did not exist (404)."""
    owner = _owner(request)
    peer = peers(request.app).get(call_id)
    if peer is not None and _same_owner(peer.owner, owner):
        if not peer.closed:
            return peer
        raise _call_ended(call_id)
    ended = ended_calls(request.app)
    if peer is None and call_id in ended and _same_owner(ended[call_id], owner):
        raise _call_ended(call_id)
    raise APIError(404, f"no call {call_id!r}", code="call_not_found", param="call_id")


def _call_ended(call_id: str) -> APIError:
    return APIError(410, f"the call {call_id!r} has ended; start a new call with a new offer", code="call_ended",
                    param="call_id")


@router.post("/v1/realtime/webrtc/{call_id}")
@router.post("/webrtc/offer/{call_id}", include_in_schema=False)
async def renegotiate(call_id: str, request: Request) -> Response:
    peer = _open_call(request, call_id)
    offer = await _read_offer(request)
    peer = _open_call(request, call_id)  # it may have ended while the body arrived
    try:
        sdp = await peer.renegotiate(offer.sdp)
    except Exception as exc:
        raise bad_offer(f"the new offer was not accepted: {_reason(exc)}") from None
    return _answer(offer, peer, sdp, 200)


@router.delete("/v1/realtime/webrtc/{call_id}")
@router.delete("/v1/realtime/calls/{call_id}", include_in_schema=False)
@router.post("/v1/realtime/calls/{call_id}/hangup", include_in_schema=False)
async def hang_up(call_id: str, request: Request) -> Response:
    peer = _open_call(request, call_id)
    await peer.close("hung up")
    return JSONResponse({"id": peer.id, "object": "realtime.call", "status": "closed"})


@router.get("/v1/realtime/webrtc/config")
async def client_config(request: Request) -> JSONResponse:
    """What a page needs for its RTCPeerConnection: the ICE servers (TURN credentials included)."""
    return JSONResponse({"ice_servers": parse_ice_servers(request.app.state.settings.ice_servers),
                         "data_channel": "oai-events"})


async def shutdown(app) -> None:
    """Close every call (app lifespan)."""
    await close_all(app)
