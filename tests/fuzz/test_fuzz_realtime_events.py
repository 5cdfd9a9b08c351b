"""Fuzzing the OpenAI Realtime client-event path: any text a client sends becomes typed events or protocol
`error` events — never an exception out of the parser (`parse_client_event`) or the session state machine
(`RealtimeSession.handle`), and every event the session answers with serializes to strict JSON.

Three generators: random text (including texts that crash naive JSON parsing), random dicts near the schema
of every client event (keys dropped, values replaced by random JSON), and valid events with random edits.
"""

from __future__ import annotations

import base64
import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from realtime.protocol import Dialect, ProtocolError, Serializer, error_event, parse_client_event
from realtime.session import (
    CancelResponse,
    DropSpeculation,
    RealtimeSession,
    Send,
    Speculate,
    SpeculateResponse,
    StartResponse,
    Transcribe,
)
from tests.fuzz.strategies import any_text, fuzz_settings, hostile_texts, mutations, near
from tests.realtime.fakes import EnergyVAD, tone

_AUDIO = base64.b64encode(tone(0.1).tobytes()).decode()
_MSG = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
VALID_EVENTS: list[dict] = [
    {"type": "session.update", "event_id": "e1", "session": {
        "type": "realtime", "instructions": "Be brief.", "output_modalities": ["audio"], "max_output_tokens": 50,
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "noise_reduction": {"type": "near_field"},
                            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                               "silence_duration_ms": 500, "create_response": True,
                                               "interrupt_response": True, "idle_timeout_ms": None},
                            "transcription": {"model": "whisper-1", "language": "en", "prompt": ""}},
                  "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy", "speed": 1.0}},
        "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"}, "temperature": 0.7}},
    {"type": "session.update", "session": {
        "modalities": ["text", "audio"], "input_audio_format": "g711_alaw", "output_audio_format": "pcm16",
        "voice": "joe", "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
        "input_audio_transcription": {"model": "whisper-1"}, "max_response_output_tokens": "inf",
        "tool_choice": {"type": "function", "function": {"name": "f"}}}},
    {"type": "input_audio_buffer.append", "audio": _AUDIO},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.create", "previous_item_id": "root", "item": _MSG},
    {"type": "conversation.item.create", "item": {"id": "item_a", "type": "message", "role": "assistant",
                                                  "content": [{"type": "output_audio", "transcript": "ok"}]}},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_audio", "audio": _AUDIO, "transcript": None}]}},
    {"type": "conversation.item.create", "item": {"type": "function_call", "call_id": "c1", "name": "f",
                                                  "arguments": "{}"}},
    {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c1", "output": "{}"}},
    {"type": "conversation.item.truncate", "item_id": "item_a", "content_index": 0, "audio_end_ms": 10},
    {"type": "conversation.item.delete", "item_id": "item_a"},
    {"type": "conversation.item.retrieve", "item_id": "item_a"},
    {"type": "response.create", "response": {
        "instructions": "x", "output_modalities": ["text"], "conversation": "none", "metadata": {"k": "v"},
        "input": [{"type": "item_reference", "id": "item_a"}, _MSG], "tools": [], "tool_choice": "auto",
        "audio": {"output": {"format": {"type": "audio/pcma"}, "voice": "joe"}}, "max_output_tokens": 20,
        "temperature": 0.8}},
    {"type": "response.create"},
    {"type": "response.cancel", "response_id": "resp_x"},
]
KNOWN_COMMANDS = (Send, Transcribe, Speculate, SpeculateResponse, DropSpeculation, StartResponse, CancelResponse)


def new_session() -> RealtimeSession:
    return RealtimeSession("sess_fuzz", EnergyVAD())


def feed(session: RealtimeSession, text: str, now: float = 1.0) -> list:
    """What the runner does with one client message (minus running models)."""
    try:
        event = parse_client_event(text)
    except ProtocolError as exc:
        return [Send(error_event(exc))]
    return session.handle(event, now)


def check_outputs(commands: list, session: RealtimeSession) -> None:
    ga, beta = Serializer(Dialect.GA, session.id), Serializer(Dialect.BETA, session.id)
    for cmd in commands:
        assert isinstance(cmd, KNOWN_COMMANDS), cmd
        if not isinstance(cmd, Send):
            continue
        for ser in (ga, beta):
            wire = ser(cmd.event)
            if wire is None:
                continue
            text = json.dumps(wire, allow_nan=False)  # strict JSON: no NaN/Infinity ever goes out
            assert json.loads(text) == wire
            if wire["type"] == "error":
                err = wire["error"]
                assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]
                assert err["event_id"] is None or isinstance(err["event_id"], str)


def run_messages(texts: list[str]) -> None:
    session = new_session()
    for i, text in enumerate(texts):
        before = session.config
        out = feed(session, text, now=1.0 + i)
        check_outputs(out, session)
        errors = [c for c in out if isinstance(c, Send) and c.event.type == "error"]
        if errors:
            assert session.config == before, "a rejected event changed the session configuration"


@fuzz_settings(300)
@given(st.lists(any_text, min_size=1, max_size=4))
def test_random_text_gives_events_or_protocol_errors(texts):
    run_messages(texts)


@fuzz_settings(300)
@given(st.lists(st.sampled_from(VALID_EVENTS).flatmap(near).map(json.dumps), min_size=1, max_size=6))
def test_events_near_the_schema_never_raise(texts):
    run_messages(texts)


@fuzz_settings(300)
@given(st.lists(mutations(st.sampled_from(VALID_EVENTS).map(json.dumps)), min_size=1, max_size=6))
def test_mutated_valid_events_never_raise(texts):
    run_messages(texts)


@fuzz_settings(200)
@given(st.lists(st.sampled_from(VALID_EVENTS).map(json.dumps) | st.sampled_from(VALID_EVENTS).flatmap(near)
                .map(json.dumps), min_size=2, max_size=12))
def test_sequences_of_valid_and_near_valid_events_never_raise(texts):
    run_messages(texts)


@fuzz_settings(100)
@given(hostile_texts)
def test_hostile_json_is_an_invalid_json_error(text):
    out = feed(new_session(), text)
    check_outputs(out, new_session())
    assert len(out) == 1 and out[0].event.type == "error"


# ---- regressions: crashes the fuzzers found ------------------------------------------------------------
def test_regression_deeply_nested_json_is_invalid_json_not_recursion_error():
    out = feed(new_session(), "[" * 100_000)
    assert out[0].event.data["error"]["code"] == "invalid_json"


def test_regression_integer_over_4300_digits_is_invalid_json_not_value_error():
    out = feed(new_session(), '{"type": "response.create", "n": ' + "7" * 5000 + "}")
    assert out[0].event.data["error"]["code"] == "invalid_json"


def test_regression_nan_literal_is_rejected_not_echoed_into_output():
    session = new_session()
    out = feed(session, '{"type": "response.create", "response": {"metadata": {"x": NaN}}}')
    assert [c.event.type for c in out if isinstance(c, Send)] == ["error"]
    assert out[0].event.data["error"]["code"] == "invalid_json" and session.active is None


def test_regression_out_of_range_number_is_rejected_not_echoed_as_infinity():
    session = new_session()
    out = feed(session, '{"type": "response.create", "response": {"metadata": {"x": 1e999}}}')
    assert [c.event.type for c in out] == ["error"] and out[0].event.data["error"]["code"] == "invalid_json"


def test_regression_tool_choice_with_a_non_object_function_is_an_error():
    for choice in ({"type": "function", "function": "f"}, {"type": "function", "function": 3}):
        out = feed(new_session(), json.dumps({"type": "session.update", "session": {"tool_choice": choice}}))
        assert [c.event.type for c in out] == ["error"]
        assert out[0].event.data["error"]["param"] == "session.tool_choice"


def test_regression_audio_format_with_a_list_type_is_an_error_not_type_error():
    update = {"audio": {"input": {"format": {"type": []}}}}
    out = feed(new_session(), json.dumps({"type": "session.update", "session": update}))
    assert [c.event.type for c in out] == ["error"]
    assert out[0].event.data["error"]["param"] == "session.audio.input.format"
    out = feed(new_session(), json.dumps({"type": "response.create", "response": {
        "audio": {"output": {"format": {"type": {"a": 1}}}}}}))
    assert [c.event.type for c in out] == ["error"]


def test_non_string_event_id_is_ignored_not_echoed():
    out = feed(new_session(), json.dumps({"type": "nope", "event_id": {"a": [1]}}))
    assert out[0].event.data["error"]["event_id"] is None


def test_valid_events_still_work_after_fuzz_hardening():
    session = new_session()
    for event in VALID_EVENTS:
        check_outputs(feed(session, json.dumps(event)), session)
    assert session.config.tools and session.conversation.items
    assert np.isfinite(session.buffer.seconds)
