"""Fuzzing the Twilio Media Streams parser and serializer (`audio_server.twilio_protocol`): any inbound text
is a typed event or a `TwilioProtocolError` (which the call logs and skips) — never another exception; what
we send parses back to what we meant."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from audio_server import twilio_protocol as tp
from tests.fuzz.strategies import any_text, fuzz_settings, hostile_texts, mutations, near

SID = "MZ0123456789abcdef"
VALID_FRAMES: list[dict] = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {"event": "start", "sequenceNumber": "1", "streamSid": SID,
     "start": {"streamSid": SID, "accountSid": "AC1", "callSid": "CA1", "tracks": ["inbound"],
               "customParameters": {"token": "t", "voice": "joe"},
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}},
    {"event": "media", "sequenceNumber": "3", "streamSid": SID,
     "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": base64.b64encode(b"\xff" * 160).decode()}},
    {"event": "dtmf", "streamSid": SID, "sequenceNumber": "4", "dtmf": {"track": "inbound_track", "digit": "1"}},
    {"event": "mark", "sequenceNumber": "5", "streamSid": SID, "mark": {"name": "resp_1"}},
    {"event": "stop", "sequenceNumber": "6", "streamSid": SID, "stop": {"accountSid": "AC1", "callSid": "CA1"}},
    {"event": "ping"},
]
INBOUND = (tp.Connected, tp.Start, tp.Media, tp.Dtmf, tp.Mark, tp.Stop, tp.Ping)


def check(text: str) -> None:
    try:
        ev = tp.parse(text)
    except tp.TwilioProtocolError as exc:
        assert isinstance(exc.code, str) and exc.code and str(exc)
        return
    assert isinstance(ev, INBOUND)
    if isinstance(ev, tp.Start):
        assert isinstance(ev.sample_rate, int) and isinstance(ev.channels, int)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in ev.custom_parameters.items())
    if isinstance(ev, tp.Media):
        assert isinstance(ev.payload, bytes) and isinstance(ev.chunk, int) and isinstance(ev.timestamp_ms, int)


@fuzz_settings(300)
@given(any_text)
def test_random_text_is_an_event_or_a_protocol_error(text):
    check(text)


@fuzz_settings(300)
@given(st.sampled_from(VALID_FRAMES).flatmap(near).map(json.dumps))
def test_frames_near_the_schema_never_raise(text):
    check(text)


@fuzz_settings(300)
@given(mutations(st.sampled_from(VALID_FRAMES).map(json.dumps)))
def test_mutated_frames_never_raise(text):
    check(text)


@fuzz_settings(100)
@given(hostile_texts)
def test_hostile_json_is_a_protocol_error(text):
    check(text)


@fuzz_settings(200)
@given(st.text(min_size=1, max_size=40), st.binary(max_size=480), st.text(min_size=1, max_size=40))
def test_outbound_frames_round_trip(stream_sid, payload, name):
    media = json.loads(tp.media(stream_sid, payload))
    assert media["streamSid"] == stream_sid and base64.b64decode(media["media"]["payload"]) == payload
    # Our own outbound frame shapes parse back as the same content (Twilio echoes marks in this shape).
    echoed = tp.parse(tp.media(stream_sid, payload))
    assert isinstance(echoed, tp.Media) and echoed.payload == payload and echoed.stream_sid == stream_sid
    mark = tp.parse(tp.mark(stream_sid, name))
    assert isinstance(mark, tp.Mark) and mark.name == name and mark.stream_sid == stream_sid
    assert json.loads(tp.clear(stream_sid)) == {"event": "clear", "streamSid": stream_sid}


def test_valid_frames_parse():
    kinds = [type(tp.parse(json.dumps(f))) for f in VALID_FRAMES]
    assert kinds == list(INBOUND)


def test_regression_integer_over_4300_digits_is_a_protocol_error_not_value_error():
    for text in ('{"event": "media", "media": {"payload": "", "chunk": ' + "1" * 5000 + "}}", "9" * 5000):
        try:
            tp.parse(text)
        except tp.TwilioProtocolError as exc:
            assert exc.code == "invalid_json"
        else:
            raise AssertionError("accepted")
