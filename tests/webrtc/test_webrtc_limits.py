"""Admission on the WebRTC offer endpoint: the same API keys, browser origins and session limit as every
other transport (the limit counts WebSocket and WebRTC sessions together), refused with OpenAI-style errors
before any call exists."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import httpx
import pytest
import websockets

from audio_server.webrtc_peer import peers
from tests.realtime.fakes import FakeEngine
from tests.webrtc.client import Client
from tests.webrtc.conftest import wait_clean

KEY = "k-right"
OFFER_URL = "/v1/realtime/webrtc"


@pytest.fixture(scope="module")
def secured(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    settings = dataclasses.replace(hub.settings, api_keys=(KEY,), allowed_origins=("https://app.example",),
                                   max_sessions=2)
    live = LiveServer(create_app(settings, hub)).start()
    live.app.state.chat_engine = FakeEngine()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def offer_sdp() -> str:
    async def make():
        client = Client()
        sdp = await client.offer()
        await client.close()
        return sdp

    return asyncio.run(make())


def post(server, sdp: str, headers: dict | None = None, path: str = OFFER_URL) -> httpx.Response:
    with httpx.Client(timeout=60) as http:
        return http.post(server.base_url + path, content=sdp,
                         headers={"Content-Type": "application/sdp", **(headers or {})})


def hang_up(server, r: httpx.Response) -> None:
    with httpx.Client(timeout=60) as http:
        bye = http.delete(server.base_url + r.headers["location"], headers={"Authorization": f"Bearer {KEY}"})
        assert bye.status_code == 200, bye.text


def error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()["error"]
    assert body["code"] == code, body
    return body["message"]


def test_offer_needs_a_valid_key(secured, offer_sdp):
    assert "API key" in error(post(secured, offer_sdp), 401, "invalid_api_key")
    error(post(secured, offer_sdp, {"Authorization": "Bearer k-wrong"}), 401, "invalid_api_key")
    error(post(secured, offer_sdp, path=OFFER_URL + "?api_key=k-wrong"), 401, "invalid_api_key")
    error(post(secured, offer_sdp, path="/webrtc/offer"), 401, "invalid_api_key")  # the alias too
    with httpx.Client(timeout=30) as http:  # hang-up and renegotiation are protected as well
        assert http.delete(secured.base_url + OFFER_URL + "/rtc_x").status_code == 401
    assert secured.app.state.open_sessions == 0 and not peers(secured.app)
    for headers, path in (({"Authorization": f"Bearer {KEY}"}, OFFER_URL), ({"X-API-Key": KEY}, OFFER_URL),
                          ({}, OFFER_URL + f"?api_key={KEY}")):
        r = post(secured, offer_sdp, headers, path)
        assert r.status_code == 201 and r.text.startswith("v=0"), r.text
        hang_up(secured, r)
    wait_clean(secured)


def test_accepted_call_connects_with_the_key(secured):
    async def scenario():
        client = Client()
        r = await client.connect(secured.base_url, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 201
        created = client.events[await client.wait("session.created")]
        await client.close()
        return created

    assert asyncio.run(scenario())["session"]["id"].startswith("sess_")
    wait_clean(secured)


def test_browser_origin_is_checked(secured, offer_sdp):
    auth = {"Authorization": f"Bearer {KEY}"}
    error(post(secured, offer_sdp, {**auth, "Origin": "https://evil.example"}), 403, "bad_origin")  # the sockets' code
    for origin in ("https://app.example", f"http://127.0.0.1:{secured.port}"):
        r = post(secured, offer_sdp, {**auth, "Origin": origin})
        assert r.status_code == 201, (origin, r.text)
        hang_up(secured, r)
    wait_clean(secured)


def test_session_limit_counts_every_transport(secured, offer_sdp):
    auth = {"Authorization": f"Bearer {KEY}"}

    async def scenario():
        ws = await websockets.connect(secured.ws_url + f"/v1/realtime?api_key={KEY}")  # one socket session
        assert json.loads(await ws.recv())["type"] == "session.created"
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(None, post, secured, offer_sdp, auth)  # the second session
        assert first.status_code == 201
        third = await loop.run_in_executor(None, post, secured, offer_sdp, auth)
        try:  # a third socket is refused the same way
            async with websockets.connect(secured.ws_url + f"/v1/realtime?api_key={KEY}") as extra:
                await extra.recv()
            socket_status = None
        except websockets.InvalidStatus as exc:
            socket_status = exc.response.status_code
        opened = secured.app.state.open_sessions
        await ws.close()
        while secured.app.state.open_sessions > 1:
            await asyncio.sleep(0.05)
        fourth = await loop.run_in_executor(None, post, secured, offer_sdp, auth)  # a freed slot is usable
        for r in (first, fourth):
            await loop.run_in_executor(None, hang_up, secured, r)
        return third, socket_status, opened, fourth

    third, socket_status, opened, fourth = asyncio.run(scenario())
    assert opened == 2
    print(f"\nthird session refused: WebRTC offer → {third.status_code} {third.json()['error']}; socket → {socket_status}")
    assert third.status_code == socket_status  # the same admission as the sockets
    assert "max_sessions" in error(third, socket_status, "too_many_sessions")
    assert third.headers.get("retry-after")
    assert fourth.status_code == 201
    wait_clean(secured)
    gauge = secured.app.state.metrics.registry.get_sample_value
    assert gauge("voxline_sessions_active", {"kind": "webrtc"}) == 0
    assert gauge("voxline_ws_protocol_errors_total", {"kind": "webrtc", "code": "too_many_sessions"}) >= 1
