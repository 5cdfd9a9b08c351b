"""Fuzzing the control-message parser of the streaming ASR and TTS sockets (`ws_common.parse_control`):
any text gives (message, None) or (None, reason) — never an exception that would end the session."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from audio_server.ws_common import parse_control
from tests.fuzz.strategies import any_text, fuzz_settings, hostile_texts, json_values, mutations, near

CONTROL = [{"type": "flush"}, {"type": "end"}, {"type": "text", "text": "Hello there."}, {"type": "cancel"},
           {"type": "eos"}]


def check(text: str) -> None:
    msg, problem = parse_control(text)
    if problem is None:
        assert isinstance(msg, dict) and isinstance(msg["type"], str)
        json.dumps(msg, allow_nan=False)  # strict JSON only: what we accept we could echo
    else:
        assert msg is None and isinstance(problem, str) and problem


@fuzz_settings(300)
@given(any_text)
def test_random_text_never_raises(text):
    check(text)


@fuzz_settings(300)
@given(st.sampled_from(CONTROL).flatmap(near).map(json.dumps) | mutations(st.sampled_from(CONTROL).map(json.dumps)))
def test_near_and_mutated_control_messages_never_raise(text):
    check(text)


@fuzz_settings(100)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=4), st.text(max_size=20))
def test_any_object_with_a_string_type_is_accepted_as_is(extra, kind):
    msg = {**extra, "type": kind}
    assert parse_control(json.dumps(msg)) == (msg, None)


@fuzz_settings(100)
@given(hostile_texts)
def test_hostile_texts_are_refused_with_a_reason(text):
    msg, problem = parse_control(text)
    assert msg is None and problem


def test_regression_deep_nesting_and_long_integers_are_refused_not_raised():
    for text in ("[" * 100_000, '{"type": "end", "n": ' + "1" * 5000 + "}", '{"type": "end", "x": NaN}'):
        msg, problem = parse_control(text)
        assert msg is None and "JSON" in problem, (text[:20], problem)
