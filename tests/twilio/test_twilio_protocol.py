"""Twilio Media Streams serializer and the voice webhook (TwiML + signature check)."""

from __future__ import annotations

import base64
import dataclasses
import json
import xml.etree.ElementTree as ET

import httpx
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from twilio.request_validator import RequestValidator

from audio_server import twilio_protocol as tp

START = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
         "start": {"streamSid": "MZ1", "accountSid": "AC1", "callSid": "CA1", "tracks": ["inbound"],
                   "customParameters": {"voice": "joe"},
                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}


def test_parse_documented_frames():
    assert tp.parse(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})) == tp.Connected("Call", "1.0.0")
    start = tp.parse(json.dumps(START))
    assert start.stream_sid == "MZ1" and start.call_sid == "CA1" and start.custom_parameters == {"voice": "joe"}
    assert (start.encoding, start.sample_rate, start.channels) == ("audio/x-mulaw", 8000, 1)
    payload = bytes(range(160))
    media = tp.parse(json.dumps({"event": "media", "sequenceNumber": "3", "streamSid": "MZ1",
                                 "media": {"track": "inbound", "chunk": "1", "timestamp": "5",
                                           "payload": base64.b64encode(payload).decode()}}))
    assert media == tp.Media("MZ1", "inbound", 1, 5, payload)
    assert tp.parse(json.dumps({"event": "dtmf", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": "7"}})) == tp.Dtmf("MZ1", "7")
    assert tp.parse(json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": "r1"}})) == tp.Mark("MZ1", "r1")
    assert tp.parse(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}})) == tp.Stop("MZ1", "CA1")


@pytest.mark.parametrize("frame,code", [
    ("{nope", "invalid_json"),
    ("[1,2]", "invalid_frame"),
    (json.dumps({"event": "party"}), "unknown_event"),
    (json.dumps({"event": "media", "media": {"payload": "***"}}), "invalid_base64"),
    (json.dumps({"event": "media"}), "missing_field"),
    (json.dumps({"event": "dtmf", "dtmf": {"digit": "x"}}), "invalid_dtmf"),
    (json.dumps({"event": "start", "start": {"streamSid": "a", "mediaFormat": {"sampleRate": "fast"}}}), "invalid_media_format"),
    ("x" * 70000, "frame_too_large"),
])
def test_bad_frames_are_protocol_errors(frame, code):
    with pytest.raises(tp.TwilioProtocolError) as err:
        tp.parse(frame)
    assert err.value.code == code


@given(st.one_of(st.text(max_size=300), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["event", "media", "start", "payload", "streamSid", "dtmf", "digit", "mark", "name", "stop",
         "mediaFormat", "sampleRate", "chunk", "timestamp", "customParameters", "tracks"]), inner, max_size=5)),
    max_leaves=20).map(json.dumps)))
@hsettings(max_examples=400, deadline=None)
def test_fuzzed_frames_never_raise_anything_but_protocol_errors(frame):
    try:
        tp.parse(frame)
    except tp.TwilioProtocolError:
        pass


def test_outbound_frames():
    assert json.loads(tp.media("MZ1", b"\xff\x7f")) == {"event": "media", "streamSid": "MZ1", "media": {"payload": "/38="}}
    assert json.loads(tp.mark("MZ1", "r1")) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "r1"}}
    assert json.loads(tp.clear("MZ1")) == {"event": "clear", "streamSid": "MZ1"}


@pytest.fixture(scope="module")
def signed_server(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    settings = dataclasses.replace(hub.settings, twilio_auth_token="tw-secret", api_keys=("k1",))
    live = LiveServer(create_app(settings, hub)).start()
    yield live
    live.stop()


def test_webhook_returns_twiml_connect_stream(server):
    r = httpx.post(server.base_url + "/twilio/voice?voice=joe&instructions=Be%20brief",
                   data={"CallSid": "CA9", "From": "+15550001"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    stream = ET.fromstring(r.text).find("./Connect/Stream")
    assert stream.get("url") == f"ws://127.0.0.1:{server.port}/twilio/media"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"voice": "joe", "instructions": "Be brief", "callSid": "CA9"}


def test_webhook_signature_is_checked(signed_server):
    url = signed_server.base_url + "/twilio/voice"
    form = {"CallSid": "CA1", "From": "+15550001", "To": "+15550002"}
    good = RequestValidator("tw-secret").compute_signature(url, form)
    assert httpx.post(url, data=form, headers={"X-Twilio-Signature": good}).status_code == 200
    bad = httpx.post(url, data=form, headers={"X-Twilio-Signature": "AAAA" + good[4:]})
    assert bad.status_code == 403 and bad.json()["error"]["code"] == "invalid_signature"
    assert httpx.post(url, data=form).status_code == 403
    tampered = dict(form, From="+15559999")
    assert httpx.post(url, data=tampered, headers={"X-Twilio-Signature": good}).status_code == 403


def test_media_socket_needs_the_webhooks_stream_token(signed_server):
    """With auth configured, only a stream started by our signed webhook (its token) is served."""
    import asyncio

    import websockets

    url = signed_server.base_url + "/twilio/voice"
    form = {"CallSid": "CA77"}
    sig = RequestValidator("tw-secret").compute_signature(url, form)
    twiml = httpx.post(url, data=form, headers={"X-Twilio-Signature": sig}).text
    params = {p.get("name"): p.get("value") for p in ET.fromstring(twiml).find("./Connect/Stream").findall("Parameter")}
    assert params["callSid"] == "CA77" and params["token"].startswith("v1.")

    async def call(custom: dict):
        start = json.loads(json.dumps(START))
        start["start"]["customParameters"] = custom
        start["start"]["callSid"] = custom["callSid"]  # Twilio's own field: the call the webhook was for
        async with websockets.connect(signed_server.ws_url + "/twilio/media") as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps(start))
            await ws.send(json.dumps({"event": "ping"}))
            try:
                return json.loads(await asyncio.wait_for(ws.recv(), 30))["event"]
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    assert asyncio.run(call({"callSid": "CA77", "token": "0" * 64})) == 1008
    assert asyncio.run(call({"callSid": "CA78", "token": params["token"]})) == 1008  # token of another call
    assert asyncio.run(call(params)) == "pong"
