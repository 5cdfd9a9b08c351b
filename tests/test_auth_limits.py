"""API keys (HTTP and sockets), browser origin check, session limit."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import httpx
import openai
import pytest
import websockets

from tests.conftest import run


@pytest.fixture(scope="module")
def secured(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    settings = dataclasses.replace(hub.settings, api_keys=("k-right",), allowed_origins=("https://app.example",),
                                   max_sessions=2)
    live = LiveServer(create_app(settings, hub)).start()
    yield live
    live.stop()


def test_http_needs_a_valid_key(secured):
    url = secured.base_url + "/v1/models"
    with httpx.Client(timeout=30) as http:
        assert http.get(url).status_code == 401
        wrong = http.get(url, headers={"Authorization": "Bearer k-wrong"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert http.get(url, headers={"Authorization": "Bearer k-right"}).status_code == 200
        assert http.get(url, headers={"X-API-Key": "k-right"}).status_code == 200
        assert http.get(secured.base_url + "/healthz").status_code == 200  # probes stay open


def test_openai_sdk_with_and_without_key(secured):
    good = openai.OpenAI(base_url=secured.base_url + "/v1", api_key="k-right", max_retries=0)
    assert any(m.id == "whisper-1" for m in good.models.list())
    bad = openai.OpenAI(base_url=secured.base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_socket_key_by_header_or_query(secured):
    async def status(url, headers=None):
        try:
            async with websockets.connect(url, additional_headers=headers) as ws:
                return json.loads(await ws.recv())["type"]
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    base = secured.ws_url + "/v1/tts/stream"
    assert run(status(base)) == 403
    assert run(status(base + "?api_key=wrong")) == 403
    assert run(status(base + "?api_key=k-right")) == "ready"
    assert run(status(base, {"Authorization": "Bearer k-right"})) == "ready"


def test_socket_origin_check(secured):
    async def status(origin):
        try:
            async with websockets.connect(secured.ws_url + "/v1/tts/stream?api_key=k-right", origin=origin) as ws:
                return json.loads(await ws.recv())["type"]
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    assert run(status("https://evil.example")) == 403
    assert run(status("https://app.example")) == "ready"
    assert run(status(f"http://127.0.0.1:{secured.port}")) == "ready"


def test_session_limit_refuses_extra_sessions(secured):
    async def scenario():
        url = secured.ws_url + "/v1/tts/stream?api_key=k-right"
        a = await websockets.connect(url)
        b = await websockets.connect(url)
        await a.recv(), await b.recv()
        try:
            async with websockets.connect(url) as c:
                await c.recv()
            third = "accepted"
        except websockets.InvalidStatus as exc:
            third = exc.response.status_code
        await a.close()
        await asyncio.sleep(0.3)
        async with websockets.connect(url) as d:  # a freed slot is usable again
            fourth = json.loads(await d.recv())["type"]
        await b.close()
        return third, fourth

    assert run(scenario()) == (403, "ready")
