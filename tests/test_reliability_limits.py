"""Limits under load, each with a clear error: sessions per API key, idle sockets, session length, append
and message size, the input buffer, request bodies, and clients that stop reading (slow consumers).

Live servers here run the real app and uvicorn with test-double models (tests/test_reliability_support.py):
what is checked is the edge's behaviour, which does not depend on what a model says."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
import websockets

from audio_server.routes_realtime import live_sessions
from realtime.outbox import Outbox
from realtime.events import ProtocolEvent
from realtime.protocol import parse_client_event
from realtime.session import RealtimeSession, Send
from tests.realtime.fakes import EnergyVAD
from tests.test_reliability_support import (
    FakeEngine,
    RawClient,
    Script,
    append,
    fake_server,
    silence,
    NonReadingClient,
    tone,
    wait_until,
)

NO_VAD = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}


def errors(live, kind: str, code: str) -> float:
    return live.gauge("voxline_ws_protocol_errors_total", kind=kind, code=code)


async def refused(url: str, **kwargs) -> tuple[int, dict]:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, **kwargs):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body)["error"]


# ---- sessions: global and per API key ----------------------------------------------------------------------
def test_per_key_and_global_session_limits_refuse_with_a_json_reason():
    live = fake_server(api_keys=("k1", "k2", "k3"), max_sessions=2, max_sessions_per_key=1)
    rt, asr = live.ws_url + "/v1/realtime", live.ws_url + "/v1/asr/stream"

    async def scenario():
        a = await RawClient.connect(rt, additional_headers={"Authorization": "Bearer k1"})
        await a.wait("session.created")
        per_key = await refused(rt + "?api_key=k1")
        other_kind = await refused(asr + "?api_key=k1")  # the limit counts every socket kind
        b = await RawClient.connect(asr + "?api_key=k2")
        await b.wait("ready")
        global_limit = await refused(rt, additional_headers={"X-API-Key": "k3"})
        await a.ws.close()
        await asyncio.to_thread(wait_until, lambda: live.app.state.open_sessions == 1, 10, "a's slot to be freed")
        again = await RawClient.connect(rt + "?api_key=k1")
        await again.wait("session.created")
        await again.ws.close()
        await b.ws.close()
        return per_key, other_kind, global_limit

    try:
        per_key, other_kind, global_limit = asyncio.run(scenario())
        wait_until(lambda: live.app.state.open_sessions == 0, 10, "every slot to be freed")
    finally:
        live.stop()
    assert per_key[0] == 429 and per_key[1]["code"] == "too_many_sessions_for_key", per_key
    assert "max_sessions_per_key" in per_key[1]["message"]
    assert other_kind[0] == 429
    assert global_limit[0] == 403 and global_limit[1]["code"] == "too_many_sessions", global_limit
    assert errors(live, "realtime", "too_many_sessions_for_key") == 1
    assert live.app.state.registry.per_key == {}  # counts return to zero


# ---- idle sockets, session length ---------------------------------------------------------------------------
def test_idle_sockets_get_an_error_then_close_1008_and_busy_ones_stay():
    live = fake_server(idle_timeout_s=0.6)

    async def scenario():
        idle_rt = await RawClient.connect(live.ws_url + "/v1/realtime")
        idle_asr = await RawClient.connect(live.ws_url + "/v1/asr/stream")
        busy = await RawClient.connect(live.ws_url + "/v1/realtime")
        for _ in range(15):  # 1.5 s of 20 ms appends, well past the idle timeout
            await busy.send(append(silence(0.02)))
            await asyncio.sleep(0.1)
        rt_close, asr_close = await idle_rt.closed(10), await idle_asr.closed(10)
        still_open = busy.close_code is None
        await busy.ws.close()
        return idle_rt, idle_asr, rt_close, asr_close, still_open

    try:
        idle_rt, idle_asr, rt_close, asr_close, still_open = asyncio.run(scenario())
    finally:
        live.stop()
    assert idle_rt.of("error")[-1]["error"]["code"] == "idle_timeout"
    assert rt_close[0] == 1008 and "idle" in rt_close[1]
    assert idle_asr.of("error")[-1]["code"] == "idle_timeout" and asr_close[0] == 1008
    assert still_open
    assert errors(live, "realtime", "idle_timeout") == 1 and errors(live, "asr", "idle_timeout") == 1


def test_sessions_end_after_max_session_s_with_session_expired():
    live = fake_server(max_session_s=1.0)

    async def scenario():
        client = await RawClient.connect(live.ws_url + "/v1/realtime")
        t0 = time.perf_counter()
        while client.close_code is None and time.perf_counter() - t0 < 15:
            try:
                await client.send(append(silence(0.05)))  # an active client: only the session length ends it
            except websockets.ConnectionClosed:
                break
            await asyncio.sleep(0.05)
        code, reason = await client.closed(10)
        return client, code, reason, time.perf_counter() - t0

    try:
        client, code, reason, elapsed = asyncio.run(scenario())
    finally:
        live.stop()
    print(f"\nsession closed {elapsed:.2f} s after opening (max_session_s=1)")
    assert client.of("error")[-1]["error"]["code"] == "session_expired"
    assert code == 1008 and "max_session_s" in reason


# ---- sizes -------------------------------------------------------------------------------------------------
def test_append_size_limit_is_an_error_and_oversized_messages_close_1009():
    live = fake_server(max_append_bytes=4096, max_ws_message_bytes=64 * 1024)  # LiveServer: ws_max_size 256 KiB

    async def scenario():
        client = await RawClient.connect(live.ws_url + "/v1/realtime")
        await client.wait("session.created")
        await client.send(NO_VAD)
        await client.wait("session.updated")
        n = len(client.events)
        await client.send(append(np.zeros(2048, np.int16)))  # exactly 4096 bytes: fine
        await client.send(append(np.zeros(2048, np.int16)))  # (a commit needs 100 ms: two of them)
        await client.send(append(np.zeros(2049, np.int16)))
        error = await client.wait("error", after=n)
        await client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait("input_audio_buffer.committed", after=n)
        await client.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 300_000}))
        code, _ = await client.closed(10)
        return error, committed, code

    try:
        error, committed, code = asyncio.run(scenario())
    finally:
        live.stop()
    assert error["error"]["code"] == "audio_too_large" and "4096 bytes" in error["error"]["message"]
    assert committed["item_id"]  # the session went on after the refused append
    assert code == 1009


def test_input_buffer_limit_without_vad_is_an_error():
    session = RealtimeSession("sess_buf", EnergyVAD(), max_buffer_seconds=1.0)
    session.handle(parse_client_event(json.dumps(NO_VAD)), 0.0)
    out = session.handle(parse_client_event(append(silence(0.9))), 1.0)
    assert out == []
    out = session.handle(parse_client_event(append(silence(0.2))), 2.0)
    err = out[0].event.data["error"]
    assert err["code"] == "input_audio_buffer_full" and "1 s" in err["message"]
    assert session.buffer.seconds <= 1.0


def test_input_buffer_limit_with_vad_commits_the_turn_as_it_is():
    """Endless speech (noise, a speaker who never pauses) cannot grow the buffer without bound: at the limit
    the turn is committed and transcribed, and listening goes on."""
    session = RealtimeSession("sess_buf", EnergyVAD(), max_buffer_seconds=2.0)
    types, longest = [], 0.0
    for i in range(60):  # 6 s of uninterrupted "speech" in 100 ms appends
        out = session.handle(parse_client_event(append(tone(0.1))), float(i))
        types += [c.event.type for c in out if isinstance(c, Send)]
        longest = max(longest, session.buffer.seconds)
    assert types.count("input_audio_buffer.committed") >= 2, types
    assert "error" not in types
    assert longest <= 2.0 + 0.1
    assert session.conversation.items and all(i.content[0].audio_ms <= 2100 for i in session.conversation.items)


def test_request_body_limit_on_a_live_server():
    live = fake_server(max_upload_bytes=64 * 1024, max_request_bytes=128 * 1024)
    try:
        with httpx.Client(timeout=30) as http:
            big = http.post(live.base_url + "/v1/audio/speech", content=b"{" + b" " * 200_000 + b"}",
                            headers={"content-type": "application/json"})
            small = http.post(live.base_url + "/v1/audio/speech", json={"input": ""})
            health = http.get(live.base_url + "/healthz")
    finally:
        live.stop()
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert "max_request_bytes" in big.json()["error"]["message"]
    assert small.status_code == 400  # under the limit the route's own checks answer
    assert health.json()["status"] == "ok"


# ---- slow consumers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("trigger", ["send_timeout", "queue_bound"])
def test_a_client_that_stops_reading_is_dropped_with_1008(trigger):
    """A client asks for a long text answer and never reads: the server does not buffer it forever. Either
    a send waits longer than `send_timeout_s`, or more than `max_queued_events` events pile up; the session
    ends, its LLM stream is closed, and once the client reads again it finds close code 1008."""
    limits = ({"send_timeout_s": 0.5, "max_queued_events": 1_000_000} if trigger == "send_timeout"
              else {"send_timeout_s": 600.0, "max_queued_events": 256})
    pieces = tuple("x" * 8000 + " " for _ in range(3000))  # 24 MB of text: more than any socket buffers
    engine = FakeEngine(default=Script(pieces, delay_s=0.001))
    live = fake_server(engine, **limits)
    app = live.app
    try:
        client = NonReadingClient(live.ws_url + "/v1/realtime")
        assert client.recv_json()["type"] == "session.created"
        client.send({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"], "audio": {"input": {"turn_detection": None}}}})
        client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Talk a lot."}]}})
        client.send({"type": "response.create"})
        t0 = time.perf_counter()
        wait_until(lambda: len(engine.requests) == 1 and not live_sessions(app), 60, "the server to drop the client")
        dropped_after = time.perf_counter() - t0
        code, reason = client.drain()  # reads again: what was already sent, then the close frame
        wait_until(lambda: app.state.open_sessions == 0 and engine.open_streams == 0, 10, "cleanup")
    finally:
        live.stop()
    print(f"\n{trigger}: dropped {dropped_after:.2f} s after response.create; the client then read "
          f"{client.received / 1e6:.1f} MB of the 24 MB answer")
    assert code == 1008 and "slow" in reason, (code, reason)
    assert client.received < 24e6  # it was cut off, not served in full
    assert engine.closed_streams == 1
    assert errors(live, "realtime", "slow_consumer") == 1


def test_outbox_bound_reports_once_and_keeps_nothing_more():
    reports = []

    async def never_sends(_event):
        await asyncio.Event().wait()

    box = Outbox(never_sends, max_queued=8, on_overflow=reports.append)
    for i in range(20):
        box.put(ProtocolEvent("response.output_text.delta", {"delta": str(i)}, response_id="r"), urgent=i % 2 == 0)
    assert reports == [8] and box.queued == 8 and box.overflowed


def test_limit_settings_come_from_voxline_env_and_bad_values_say_how_to_fix(monkeypatch):
    from audio_server.settings import Settings

    for name, value in (("MAX_SESSIONS_PER_KEY", "3"), ("IDLE_TIMEOUT_S", "2.5"), ("SEND_TIMEOUT_S", "4"),
                        ("MAX_SESSION_S", "120"), ("SHUTDOWN_TIMEOUT_S", "7"), ("MAX_QUEUED_EVENTS", "512"),
                        ("MAX_APPEND_BYTES", "65536"), ("MAX_INPUT_BUFFER_S", "30"), ("MAX_REQUEST_BYTES", "40000000"),
                        ("MAX_UPLOAD_AUDIO_S", "60")):
        monkeypatch.setenv(f"VOXLINE_{name}", value)
    s = Settings.from_env()
    assert (s.max_sessions_per_key, s.idle_timeout_s, s.send_timeout_s, s.max_session_s, s.shutdown_timeout_s,
            s.max_queued_events, s.max_append_bytes, s.max_input_buffer_s, s.max_request_bytes,
            s.max_upload_audio_s) == (3, 2.5, 4.0, 120.0, 7.0, 512, 65536, 30.0, 40_000_000, 60.0)
    with pytest.raises(ValueError, match="VOXLINE_MAX_REQUEST_BYTES"):
        Settings(max_upload_bytes=40 * 1024 * 1024)
    with pytest.raises(ValueError, match="max_sessions_per_key"):
        Settings(max_sessions=4, max_sessions_per_key=5)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        Settings(idle_timeout_s=-1)
