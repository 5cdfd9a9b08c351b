"""Issue 15, items 1, 2 and 8: the Twilio webhook and media socket as an attacker on loopback sees them.

1. with API keys but no Twilio token, the webhook minted stream tokens for anyone;
2. bare `/twilio/media` sockets took session slots at the handshake and locked keyed clients out;
8. a signed webhook replayed; the signature trusted X-Forwarded-Host; one stream token served two calls at
   once; a non-ASCII token raised a TypeError.

Each test runs the attack against a live server and checks the refusal and that a legitimate session is
served all the same. Only the VAD and Piper load (a started call needs them); no LLM or ASR runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import xml.etree.ElementTree as ET

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

START_TIMEOUT_S = 1.0
TWILIO_TOKEN = "tw-secret"


def _live(hub, **overrides):
    """A live app with `hub`'s settings plus `overrides` (fields this checkout lacks are left out, so the
    attack itself runs on the old code too)."""
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    known = {f.name for f in dataclasses.fields(hub.settings)}
    settings = dataclasses.replace(hub.settings, **{k: v for k, v in overrides.items() if k in known})
    return LiveServer(create_app(settings, hub)).start()


@pytest.fixture
def keyed(hub):
    """API keys, no Twilio token, two sessions at most: the probe's setup (one server per test, so an
    attack that works on the old code cannot spill into the next test)."""
    live = _live(hub, api_keys=("k1",), max_sessions=2, twilio_start_timeout_s=START_TIMEOUT_S)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def signed(hub):
    live = _live(hub, twilio_auth_token=TWILIO_TOKEN, api_keys=("k1",))
    yield live
    live.stop()


def stream_params(twiml: str) -> dict[str, str]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def keyed_webhook(live, call_sid: str) -> dict[str, str]:
    r = httpx.post(live.base_url + "/twilio/voice", data={"CallSid": call_sid}, auth=("twilio", "k1"))
    assert r.status_code == 200, r.text
    return stream_params(r.text)


def start_frame(call_sid: str, custom: dict[str, str]) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + call_sid, "start": {
        "streamSid": "MZ" + call_sid, "accountSid": "AC1", "callSid": call_sid, "tracks": ["inbound"],
        "customParameters": custom,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


async def answer(ws, timeout: float = 60.0) -> str | int | None:
    """The next frame's event, the close code if the server closes the stream instead, or "silence"."""
    try:
        return json.loads(await asyncio.wait_for(ws.recv(), timeout))["event"]
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        return "silence"


async def open_call(live, call_sid: str, custom: dict[str, str]):
    """A media stream as Twilio opens it: connected, start, then a ping to see whether it is served."""
    try:
        ws = await websockets.connect(live.ws_url + "/twilio/media")
    except websockets.InvalidStatus as exc:  # refused at the handshake
        return None, exc.response.status_code
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(start_frame(call_sid, custom))
    await ws.send(json.dumps({"event": "ping"}))
    return ws, await answer(ws)


async def call_outcome(live, call_sid: str, custom: dict[str, str]) -> str | int | None:
    ws, outcome = await open_call(live, call_sid, custom)
    if ws is not None:
        await ws.close()
    return outcome


# ---- 1. the webhook needs a key when no Twilio token is configured ----------------------------------------
def test_webhook_without_a_key_mints_no_stream_token(keyed):
    url = keyed.base_url + "/twilio/voice"
    bare = httpx.post(url, data={"CallSid": "CAnokey"})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    assert bare.headers["www-authenticate"].startswith("Basic")  # so Twilio sends the URL's credentials
    assert "token" not in bare.text
    assert httpx.post(url + "?api_key=wrong", data={"CallSid": "CAnokey"}).status_code == 401
    assert httpx.post(url, data={"CallSid": "CAnokey"}, auth=("twilio", "wrong")).status_code == 401
    assert httpx.post(url, data={"CallSid": "CAnokey"}, headers={"Authorization": "Basic %%%"}).status_code == 401

    # The key as Twilio sends it (basic auth from https://twilio:KEY@host/...) or as any client does.
    params = keyed_webhook(keyed, "CAkeyed")
    bearer = httpx.post(url, data={"CallSid": "CAbearer"}, headers={"Authorization": "Bearer k1"})
    assert bearer.status_code == 200 and "token" in stream_params(bearer.text)
    assert asyncio.run(call_outcome(keyed, "CAkeyed", params)) == "pong"


# ---- 2. a bare media socket holds no session slot --------------------------------------------------------
def test_bare_media_sockets_take_no_session_slot(keyed):
    async def tts_session() -> str | int:
        try:
            async with websockets.connect(keyed.ws_url + "/v1/tts/stream?api_key=k1") as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), 30))["type"]
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    async def scenario():
        bare = []
        for _ in range(3):  # more than max_sessions (2)
            try:
                bare.append(await websockets.connect(keyed.ws_url + "/twilio/media"))
            except websockets.InvalidStatus as exc:
                bare.append(exc.response.status_code)
        connected, pinging = bare[0], bare[1]
        if not isinstance(connected, int):
            await connected.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        if not isinstance(pinging, int):  # keep-alives do not stand in for a start
            try:
                for _ in range(20):
                    await pinging.send(json.dumps({"event": "ping"}))
            except websockets.ConnectionClosed:  # the server closed it part way: what we want
                pass
        open_while_bare = keyed.app.state.open_sessions
        keyed_client = await tts_session()  # a keyed client is served while the bare sockets are open
        tokenless = await call_outcome(keyed, "CAtokenless", {"callSid": "CAtokenless"})
        call, served = await open_call(keyed, "CAreal", keyed_webhook(keyed, "CAreal"))
        closes = [s if isinstance(s, int) else await answer(s, timeout=10 * START_TIMEOUT_S + 5) for s in bare]
        if call is not None:
            await call.close()
        return open_while_bare, keyed_client, tokenless, served, closes

    open_while_bare, keyed_client, tokenless, served, closes = asyncio.run(scenario())
    assert keyed_client == "ready"
    assert open_while_bare == 0
    assert tokenless == 1008  # a start without the webhook's token is refused at once
    assert served == "pong"  # and a call with it is served
    assert closes == [1008, 1008, 1008]  # no start within twilio_start_timeout_s: closed


# ---- 8. replay, forwarded host, one token for two calls, garbage tokens -----------------------------------
def test_signed_webhook_is_accepted_once(signed):
    url = signed.base_url + "/twilio/voice"
    form = {"CallSid": "CAreplay", "From": "+15550001"}
    headers = {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, form)}
    first = httpx.post(url, data=form, headers=headers)
    assert first.status_code == 200 and "token" in stream_params(first.text)
    replay = httpx.post(url, data=form, headers=headers)
    assert replay.status_code == 403 and replay.json()["error"]["code"] == "replayed_request"
    other = {"CallSid": "CAother", "From": "+15550001"}
    fresh = httpx.post(url, data=other,
                       headers={"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, other)})
    assert fresh.status_code == 200  # another call's webhook is served


def test_signature_is_not_checked_against_a_forwarded_host(hub, signed):
    """Twilio's auth token signs every webhook of the account: a request signed for another host of it must
    not pass here by naming that host in X-Forwarded-Host (unless the operator says a proxy sets it)."""
    form = {"CallSid": "CAforwarded"}
    elsewhere = RequestValidator(TWILIO_TOKEN).compute_signature("https://other.example/twilio/voice", form)
    forwarded = {"X-Twilio-Signature": elsewhere, "X-Forwarded-Host": "other.example", "X-Forwarded-Proto": "https"}
    r = httpx.post(signed.base_url + "/twilio/voice", data=form, headers=forwarded)
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_signature"
    assert "other.example" not in r.text

    behind_proxy = _live(hub, twilio_auth_token=TWILIO_TOKEN, trust_proxy_headers=True)
    try:
        trusted = httpx.post(behind_proxy.base_url + "/twilio/voice", data=form, headers=forwarded)
        assert trusted.status_code == 200
        assert ET.fromstring(trusted.text).find("./Connect/Stream").get("url") == "wss://other.example/twilio/media"
    finally:
        behind_proxy.stop()
    own = RequestValidator(TWILIO_TOKEN).compute_signature(signed.base_url + "/twilio/voice", form)
    assert httpx.post(signed.base_url + "/twilio/voice", data=form,
                      headers={"X-Twilio-Signature": own}).status_code == 200


def test_one_stream_token_serves_one_call(keyed):
    params = keyed_webhook(keyed, "CAonce")

    async def scenario():
        first, served = await open_call(keyed, "CAonce", params)
        second = await call_outcome(keyed, "CAonce", params)  # the same token while the first call runs
        await first.send(json.dumps({"event": "ping"}))
        still = await answer(first)
        await first.close()
        await asyncio.sleep(0.2)  # the server has seen the first call end
        later = await call_outcome(keyed, "CAonce", params)  # and once it has ended
        return served, second, still, later

    served, second, still, later = asyncio.run(scenario())
    assert served == "pong" and still == "pong"
    assert second == 1008 and later == 1008


def test_garbage_stream_tokens_are_refused_cleanly(keyed, caplog):
    valid = keyed_webhook(keyed, "CAgarbage")["token"]
    forged = valid[:-1] + ("0" if valid[-1] != "0" else "1")
    garbage = ["é" * 64, "\u0663" * 64, "v1." + "٠" * 10 + ".x.y", "\x00", "x" * 20000, "", forged,
               valid.upper(), valid + "0"]

    async def scenario():
        outcomes = [await call_outcome(keyed, "CAgarbage", {"callSid": "CAgarbage", "token": t}) for t in garbage]
        return outcomes, await call_outcome(keyed, "CAgarbage", {"callSid": "CAgarbage", "token": valid})

    with caplog.at_level(logging.ERROR):
        outcomes, legit = asyncio.run(scenario())
    assert outcomes == [1008] * len(garbage)
    assert legit == "pong"  # the real token still works after all of that (garbage did not use it up)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "twilio" in r.name], caplog.text


def test_stream_tokens_expire_and_belong_to_one_call():
    from audio_server.twilio_tokens import SeenOnce, StreamTokens

    now = [1_000_000.0]
    tokens = StreamTokens(ttl_s=60, clock=lambda: now[0])
    a, b = tokens.issue("CA1"), tokens.issue("CA1")
    assert a != b
    assert tokens.claim(a, "CA2").code == "invalid_token"
    assert tokens.claim(a, "CA1") is None and tokens.claim(a, "CA1").code == "token_used"
    now[0] += 61
    assert tokens.claim(b, "CA1").code == "expired_token"
    assert tokens.claim(12345, "CA1").code == "invalid_token"

    seen = SeenOnce(capacity=2, clock=lambda: now[0])
    assert seen.add("x", now[0] + 10) and not seen.add("x", now[0] + 10)
    assert seen.add("y", now[0] + 20) and not seen.add("z", now[0] + 20)  # full: refuses, never forgets early
    now[0] += 15
    assert "x" not in seen and seen.add("z", now[0] + 20) and len(seen) == 2
