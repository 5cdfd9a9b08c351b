"""Client event parsing, session configuration in both dialects, and the per-dialect serializer."""

from __future__ import annotations

import base64
import json

import pytest

from realtime.audio import PCM16, PCMA, PCMU
from realtime.config import ConfigError, SessionConfig, apply_update, response_options
from realtime.events import AudioDelta, ProtocolEvent, ResponseDone, ResponseInfo
from realtime.items import Content, Item
from realtime.protocol import (
    MAX_APPEND_BYTES,
    AudioAppend,
    Dialect,
    ItemTruncate,
    ProtocolError,
    ResponseCancel,
    Serializer,
    SessionUpdate,
    parse_client_event,
)


def parse_error(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_event(text)
    return info.value


def test_parse_valid_events():
    audio = base64.b64encode(b"\x01\x00" * 10).decode()
    ev = parse_client_event(json.dumps({"type": "input_audio_buffer.append", "audio": audio, "event_id": "e1"}))
    assert isinstance(ev, AudioAppend) and ev.audio == b"\x01\x00" * 10 and ev.event_id == "e1"
    ev = parse_client_event(json.dumps({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0,
                                        "audio_end_ms": 5}))
    assert ev == ItemTruncate(None, "i", 0, 5)
    assert parse_client_event('{"type": "response.cancel"}') == ResponseCancel(None, None)
    assert isinstance(parse_client_event('{"type": "session.update", "session": {}}'), SessionUpdate)


def test_parse_errors_name_the_problem():
    assert parse_error("{not json").code == "invalid_json"
    assert parse_error("[1, 2]").code == "invalid_event"
    err = parse_error('{"type": "input_audio_buffer.explode", "event_id": "x9"}')
    assert err.code == "unknown_event_type" and err.event_id == "x9" and "input_audio_buffer.append" in err.message
    assert parse_error('{"type": "input_audio_buffer.append", "audio": "%%%not base64"}').code == "invalid_base64"
    assert parse_error('{"type": "input_audio_buffer.append", "audio": 5}').param == "audio"
    negative = '{"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": -1}'
    assert parse_error(negative).param == "audio_end_ms"
    assert parse_error('{"type": "conversation.item.delete"}').code == "missing_required_parameter"
    big = "A" * ((MAX_APPEND_BYTES // 3 + 10) * 4)
    assert parse_error(json.dumps({"type": "input_audio_buffer.append", "audio": big})).code == "audio_too_large"


def test_session_update_ga_shape():
    cfg = apply_update(SessionConfig(), {
        "type": "realtime", "output_modalities": ["text"], "instructions": "Be brief.",
        "audio": {"input": {"format": {"type": "audio/pcmu"},
                            "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 300,
                                               "interrupt_response": False},
                            "transcription": {"model": "whisper-1", "language": "en"}},
                  "output": {"format": {"type": "audio/pcma"}, "voice": "marin"}},
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "tool_choice": "required", "max_output_tokens": 50})
    assert not cfg.audio_out and cfg.instructions == "Be brief."
    assert cfg.input_format is PCMU and cfg.output_format is PCMA and cfg.voice == "marin"
    td = cfg.turn_detection
    assert td.threshold == 0.6 and td.silence_duration_ms == 300 and not td.interrupt_response and td.create_response
    assert cfg.transcription.language == "en" and cfg.tools[0].name == "get_weather"
    assert cfg.tool_choice == "required" and cfg.max_tokens == 50


def test_session_update_beta_shape_and_clearing():
    cfg = apply_update(SessionConfig(), {"modalities": ["text", "audio"], "input_audio_format": "g711_alaw",
                                         "output_audio_format": "pcm16", "voice": "alloy", "turn_detection": None,
                                         "input_audio_transcription": None, "max_response_output_tokens": "inf",
                                         "temperature": 0.6})
    assert cfg.audio_out and cfg.input_format is PCMA and cfg.output_format is PCM16
    assert cfg.turn_detection is None and cfg.transcription is None and cfg.max_output_tokens == "inf"
    assert apply_update(cfg, {"turn_detection": {"type": "server_vad"}}).turn_detection.silence_duration_ms == 500


@pytest.mark.parametrize("update, param", [
    ({"voice": "nonexistent"}, "session.voice"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "session.audio.input.format"),
    ({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}},
     "session.audio.input.turn_detection.threshold"),
    ({"turn_detection": {"type": "lookahead"}}, "session.turn_detection.type"),
    ({"input_audio_format": "mp3"}, "session.input_audio_format"),
    ({"modalities": ["video"]}, "session.modalities"),
    ({"max_output_tokens": 0}, "session.max_output_tokens"),
    ({"tools": [{"type": "function"}]}, "session.tools[0].name"),
    ({"surprise": 1}, "session.surprise"),
])
def test_session_update_errors_carry_the_parameter(update, param):
    with pytest.raises(ConfigError) as info:
        apply_update(SessionConfig(), update)
    assert info.value.param == param


def test_voice_is_fixed_after_audio():
    with pytest.raises(ConfigError) as info:
        apply_update(SessionConfig(voice="joe"), {"voice": "alloy"}, audio_sent=True)
    assert info.value.code == "cannot_update_voice"


def test_response_overrides():
    cfg = SessionConfig()
    opts = response_options(cfg, {"output_modalities": ["text"], "instructions": "x", "conversation": "none",
                                  "max_output_tokens": 7, "metadata": {"k": "v"}})
    assert not opts.audio_out and opts.instructions == "x" and opts.conversation == "none" and opts.max_tokens == 7
    assert response_options(cfg, None).audio_out


def test_serializer_dialects():
    cfg = SessionConfig(input_format=PCMU)
    ga, beta = Serializer(Dialect.GA, "sess_1"), Serializer(Dialect.BETA, "sess_1")
    s_ga = ga(ProtocolEvent("session.created", {"session": cfg}))["session"]
    s_beta = beta(ProtocolEvent("session.created", {"session": cfg}))["session"]
    assert s_ga["audio"]["input"]["format"] == {"type": "audio/pcmu"} and s_ga["output_modalities"] == ["audio"]
    assert s_beta["input_audio_format"] == "g711_ulaw" and s_beta["modalities"] == ["text", "audio"]
    assert s_beta["turn_detection"]["type"] == "server_vad"

    delta = AudioDelta("resp_1", "item_1", 0, b"\x00\x00", PCM16, 1.0)
    assert ga(delta)["type"] == "response.output_audio.delta" and beta(delta)["type"] == "response.audio.delta"
    assert ga(delta)["delta"] == "AAA="  # audio travels as bytes; base64 is this wire's business
    assert beta(ProtocolEvent("response.output_audio_transcript.done"))["type"] == "response.audio_transcript.done"
    assert beta(ProtocolEvent("response.output_text.delta"))["type"] == "response.text.delta"
    assert beta(ProtocolEvent("conversation.item.added"))["type"] == "conversation.item.created"
    assert beta(ProtocolEvent("conversation.item.done")) is None  # no beta equivalent

    item = Item("item_1", "message", role="assistant", content=[Content("audio", transcript="hi")])
    assert ga(ProtocolEvent("x", {"item": item}))["item"]["content"][0]["type"] == "output_audio"
    assert beta(ProtocolEvent("x", {"item": item}))["item"]["content"][0]["type"] == "audio"
    info = ResponseInfo("resp_1", True, PCM16.ga_object(), "pcm16", "joe", "inf", 0.8, status="cancelled",
                        reason="turn_detected")
    done = ResponseDone(info)
    r_ga, r_beta = ga(done)["response"], beta(done)["response"]
    assert r_ga["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert r_ga["output_modalities"] == ["audio"] and r_beta["modalities"] == ["text", "audio"]
    ids = {ga(delta)["event_id"] for _ in range(5)}
    assert len(ids) == 5


def test_realtime_engine_lookup_order():
    from types import SimpleNamespace

    from audio_server.models import realtime_chat_engine

    asked: list = []
    wired = SimpleNamespace(chat_engine=None, chat_engines=lambda name: asked.append(name) or "shared")
    assert realtime_chat_engine(wired, "gpt-realtime") == "shared" and asked == [None]  # Realtime name → default LLM
    assert realtime_chat_engine(SimpleNamespace(chat_engine="double", chat_engines=wired.chat_engines)) == "double"
    realtime_chat_engine(wired, "smollm2")
    assert asked[-1] == "smollm2-135m-instruct"
