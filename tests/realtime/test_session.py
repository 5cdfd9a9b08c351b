"""The session state machine alone: decisions as typed commands, with a fake VAD and scripted model output."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from realtime.protocol import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
)
from realtime.session import CancelResponse, RealtimeSession, Send, Speculate, StartResponse, Transcribe
from runtime.chat_api import ToolCall
from tests.realtime.fakes import EnergyVAD, silence, tone


def sends(cmds) -> list[str]:
    return [c.event.type for c in cmds if isinstance(c, Send)]


def first(cmds, kind):
    return next(c for c in cmds if isinstance(c, kind))


def event_of(cmds, type_):
    return next(c.event for c in cmds if isinstance(c, Send) and c.event.type == type_)


def append(session: RealtimeSession, pcm: np.ndarray, now: float = 0.0, chunk_ms: int = 40) -> list:
    out = []
    step = 24 * chunk_ms
    for i in range(0, len(pcm), step):
        out += session.handle(AudioAppend(None, pcm[i:i + step].astype("<i2").tobytes()), now + i / 24000)
    return out


@pytest.fixture
def session() -> RealtimeSession:
    return RealtimeSession("sess_test", EnergyVAD())


def speak_turn(session: RealtimeSession, seconds: float = 1.0) -> list:
    return append(session, np.concatenate([silence(0.3), tone(seconds), silence(0.8)]))


def test_server_vad_turn(session):
    cmds = speak_turn(session)
    assert sends(cmds)[:6] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                               "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
                               "response.created"]
    started = event_of(cmds, "input_audio_buffer.speech_started")
    stopped = event_of(cmds, "input_audio_buffer.speech_stopped")
    committed = event_of(cmds, "input_audio_buffer.committed")
    assert started.data["item_id"] == stopped.data["item_id"] == committed.data["item_id"]
    # speech is 0.3–1.3 s; start is pulled back by the 300 ms prefix padding, the end is where silence began
    assert started.data["audio_start_ms"] <= 50 and 1250 <= stopped.data["audio_end_ms"] <= 1400
    spec, asr = first(cmds, Speculate), first(cmds, Transcribe)
    assert spec.key == asr.key  # the turn reuses the speculative decode of the same span
    assert 1.1 < len(asr.audio) / 16000 < 1.6
    start = first(cmds, StartResponse)
    assert start.wait_for == (asr.item_id,)
    assert session.active is not None and session.active.trigger == "server_vad"


def test_transcript_events_and_context(session):
    cmds = speak_turn(session)
    asr = first(cmds, Transcribe)
    out = session.transcription_done(asr.item_id, "What is the capital of France?", 1.2)
    assert sends(out) == ["conversation.item.input_audio_transcription.delta",
                          "conversation.item.input_audio_transcription.completed"]
    assert event_of(out, "conversation.item.input_audio_transcription.completed").data["transcript"].startswith("What")
    request = session.chat_request(session.active.id)
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[1].content == "What is the capital of France?"


def test_failed_transcription_is_reported(session):
    asr = first(speak_turn(session), Transcribe)
    out = session.transcription_failed(asr.item_id, "decoder crashed")
    assert sends(out) == ["conversation.item.input_audio_transcription.failed"]


def test_no_transcription_events_when_disabled(session):
    session.handle(SessionUpdate(None, {"input_audio_transcription": None}), 0)
    asr = first(speak_turn(session), Transcribe)
    assert not asr.emit_events


def run_answer(session, text_pieces, audio_ms_per_piece=500.0):
    """Feed scripted model output for the active response; returns (commands, response id)."""
    rid = session.active.id
    cmds, pos = [], 0.0
    for piece in text_pieces:
        cmds += session.response_text(rid, piece)
        session.response_sentence(rid, piece.strip(), pos, pos + audio_ms_per_piece)
        cmds += session.response_audio(rid, b"\x00" * 4800, pos, audio_ms_per_piece)
        pos += audio_ms_per_piece
    return cmds, rid


def test_response_event_sequence(session):
    speak_turn(session)
    cmds, rid = run_answer(session, ["Paris is the capital. ", "It is in France."])
    cmds += session.response_finish(rid, "completed", usage=(12, 8))
    names = sends(cmds)
    assert names[:4] == ["response.output_item.added", "conversation.item.added", "response.content_part.added",
                         "response.output_audio_transcript.delta"]
    assert names[-6:] == ["response.output_audio.done", "response.output_audio_transcript.done",
                          "response.content_part.done", "response.output_item.done", "conversation.item.done",
                          "response.done"]
    assert all(not c.urgent for c in cmds if isinstance(c, Send))  # all in the response's lane, in order
    done = event_of(cmds, "response.done").data["response"]
    assert done.status == "completed" and done.output_tokens == 8
    assert done.output[0].content[0].transcript == "Paris is the capital. It is in France."
    assert session.active is None


def test_barge_in_cancels_urgently(session):
    speak_turn(session)
    rid = session.active.id
    run_answer(session, ["One two three four. ", "Five six seven eight."])
    session.audio_delta_sent(rid, 750.0, now=0)  # the socket has sent 750 ms of the answer
    cmds = append(session, tone(0.5))  # the user talks over it
    names = sends(cmds)
    assert names[0] == "input_audio_buffer.speech_started"
    cancel_at = next(i for i, c in enumerate(cmds) if isinstance(c, CancelResponse))
    done_at = next(i for i, c in enumerate(cmds) if isinstance(c, Send) and c.event.type == "response.done")
    assert cmds[cancel_at].response_id == rid and cancel_at < done_at
    assert all(c.urgent for c in cmds if isinstance(c, Send))
    response = cmds[done_at].event.data["response"]
    assert response.status == "cancelled" and response.reason == "turn_detected"
    # the item keeps only what was sent as audio: all of sentence 1, half of sentence 2's words
    assert response.output[0].content[0].transcript == "One two three four. Five six"
    assert session.active is None
    assert session.response_audio(rid, b"\x00" * 10, 1000, 10) == []  # late output of the old response is ignored


def test_no_interrupt_when_disabled(session):
    session.handle(SessionUpdate(None, {"turn_detection": {"type": "server_vad", "interrupt_response": False}}), 0)
    speak_turn(session)
    cmds = append(session, tone(0.5))
    assert "input_audio_buffer.speech_started" in sends(cmds) and not any(isinstance(c, CancelResponse) for c in cmds)


def test_client_cancel_and_errors(session):
    out = session.handle(ResponseCancel(None, None), 0)
    assert sends(out) == ["error"] and out[0].event.data["error"]["code"] == "response_cancel_not_active"
    session.handle(SessionUpdate(None, {"turn_detection": None}), 0)
    session.handle(ResponseCreate(None, None), 0)
    rid = session.active.id
    out = session.handle(ResponseCreate("ev2", None), 0)
    assert out[0].event.data["error"]["code"] == "conversation_already_has_active_response"
    assert out[0].event.data["error"]["event_id"] == "ev2"
    out = session.handle(ResponseCancel(None, rid), 0)
    assert isinstance(out[0], CancelResponse)
    assert event_of(out, "response.done").data["response"].reason == "client_cancelled"


def test_truncate_removes_unheard_text_from_the_context(session):
    speak_turn(session)
    rid = session.active.id
    user_item = session.conversation.items[0].id
    session.transcription_done(user_item, "Tell me a story.", 1.0)
    cmds, _ = run_answer(session, ["Once upon a time there was a fox. ", "It lived in a dark forest by a river."],
                         audio_ms_per_piece=2000)
    session.response_finish(rid, "completed")
    item = next(i for i in session.conversation.items if i.role == "assistant")
    out = session.handle(ItemTruncate(None, item.id, 0, 3000), 0)
    assert sends(out) == ["conversation.item.truncated"]
    assert item.content[0].transcript == "Once upon a time there was a fox. It lived in a"
    session.handle(SessionUpdate(None, {"turn_detection": None}), 0)
    session.handle(ResponseCreate(None, None), 0)
    request = session.chat_request(session.active.id)
    assert request.messages[-1].content == "Once upon a time there was a fox. It lived in a"
    assert "forest" not in " ".join(str(m.content) for m in request.messages)
    bad = session.handle(ItemTruncate(None, item.id, 0, 999_999), 0)
    assert bad[0].event.data["error"]["param"] == "audio_end_ms"
    bad = session.handle(ItemTruncate(None, user_item, 0, 10), 0)
    assert sends(bad) == ["error"]


def test_tool_call_events(session):
    tools = [{"type": "function", "name": "get_time"}]
    session.handle(SessionUpdate(None, {"turn_detection": None, "tools": tools}), 0)
    session.handle(ResponseCreate(None, None), 0)
    rid = session.active.id
    cmds = session.response_tool_call(rid, ToolCall("call_1", "get_time", '{"tz": "UTC"}'))
    cmds += session.response_finish(rid, "completed")
    assert sends(cmds) == ["response.output_item.added", "conversation.item.added",
                           "response.function_call_arguments.delta", "response.function_call_arguments.done",
                           "response.output_item.done", "conversation.item.done", "response.done"]
    done = event_of(cmds, "response.function_call_arguments.done").data
    assert done["call_id"] == "call_1" and done["name"] == "get_time" and done["arguments"] == '{"tz": "UTC"}'
    out = session.handle(ItemCreate(None, {"type": "function_call_output", "call_id": "call_1", "output": "12:00"}), 0)
    assert sends(out) == ["conversation.item.added", "conversation.item.done"]
    session.handle(ResponseCreate(None, None), 0)
    msgs = session.chat_request(session.active.id).messages
    assert msgs[-2].tool_calls[0].name == "get_time" and msgs[-1].role == "tool" and msgs[-1].content == "12:00"
    out = session.handle(ItemCreate(None, {"type": "function_call_output", "call_id": "nope", "output": "x"}), 0)
    assert sends(out) == ["error"]


def test_items_create_retrieve_delete_and_ordering(session):
    a = session.handle(ItemCreate(None, {"type": "message", "role": "user",
                                         "content": [{"type": "input_text", "text": "first"}]}), 0)
    a_id = event_of(a, "conversation.item.added").data["item"].id
    session.handle(ItemCreate(None, {"id": "sys1", "type": "message", "role": "system",
                                     "content": [{"type": "input_text", "text": "be nice"}]}, "root"), 0)
    assert [i.id for i in session.conversation.items] == ["sys1", a_id]
    got = session.handle(ItemRetrieve(None, "sys1"), 0)
    assert event_of(got, "conversation.item.retrieved").data["item"].content[0].text == "be nice"
    assert sends(session.handle(ItemDelete(None, "sys1"), 0)) == ["conversation.item.deleted"]
    assert sends(session.handle(ItemDelete(None, "sys1"), 0)) == ["error"]
    dup = session.handle(ItemCreate(None, {"id": a_id, "type": "message", "role": "user",
                                           "content": [{"type": "input_text", "text": "again"}]}), 0)
    assert sends(dup) == ["error"]
    bad = session.handle(ItemCreate(None, {"type": "message", "role": "robot", "content": []}), 0)
    assert bad[0].event.data["error"]["param"] == "item.role"


def test_input_audio_item_is_transcribed(session):
    pcm = tone(0.5).astype("<i2").tobytes()
    out = session.handle(ItemCreate(None, {"type": "message", "role": "user", "content": [
        {"type": "input_audio", "audio": base64.b64encode(pcm).decode()}]}), 0)
    asr = first(out, Transcribe)
    assert abs(len(asr.audio) / 16000 - 0.5) < 0.01


def test_manual_commit_and_clear(session):
    session.handle(SessionUpdate(None, {"turn_detection": None}), 0)
    out = session.handle(AudioCommit(None), 0)
    assert out[0].event.data["error"]["code"] == "input_audio_buffer_commit_empty"
    append(session, tone(0.4))
    assert sends(session.handle(AudioClear(None), 0)) == ["input_audio_buffer.cleared"]
    assert sends(session.handle(AudioCommit(None), 0)) == ["error"]
    append(session, tone(0.4))
    out = session.handle(AudioCommit(None), 0)
    assert sends(out) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    assert session.active is None  # no VAD: the client asks for the response


def test_wrong_format_audio_is_an_error_and_state_survives(session):
    out = session.handle(AudioAppend(None, b"\x00\x01\x02"), 0)
    assert out[0].event.data["error"]["code"] == "invalid_audio"
    assert sends(speak_turn(session))[0] == "input_audio_buffer.speech_started"


def test_g711_input_drives_the_vad(session):
    from realtime.audio import ulaw_encode

    session.handle(SessionUpdate(None, {"input_audio_format": "g711_ulaw"}), 0)
    pcm8k = np.concatenate([silence(0.3, 8000), tone(1.0, 8000), silence(0.8, 8000)])
    cmds = []
    for i in range(0, len(pcm8k), 160):  # 20 ms frames, as a phone line sends them
        cmds += session.handle(AudioAppend(None, ulaw_encode(pcm8k[i:i + 160])), i / 8000)
    assert "input_audio_buffer.committed" in sends(cmds)
    assert 1.1 < len(first(cmds, Transcribe).audio) / 16000 < 1.6


def test_truncating_the_item_being_spoken_cancels_the_response_first(session):
    speak_turn(session)
    rid = session.active.id
    run_answer(session, ["One two three four. ", "Five six seven eight."])
    session.audio_delta_sent(rid, 600.0, now=0)
    item_id = session.active.message.id
    out = session.handle(ItemTruncate(None, item_id, 0, 99_999), 0)  # out of range: still cancels
    assert isinstance(out[0], CancelResponse) and sends(out)[-2:] == ["response.done", "error"]
    assert session.active is None
    out = session.handle(ItemTruncate(None, item_id, 0, 250), 0)
    assert sends(out) == ["conversation.item.truncated"]
    assert session.conversation.get(item_id).content[0].transcript == "One two"


def test_the_next_turn_is_transcribed_with_the_assistants_last_words_as_prompt(session):
    """Whisper hears the user's answer after the bot's question, as the user did (realtime/asr_prompt.py)."""
    first_turn = first(speak_turn(session), Transcribe)
    assert first_turn.prompt is None  # nothing was said before the first turn
    session.transcription_done(first_turn.item_id, "I need a forecast.", 1.0)
    _, rid = run_answer(session, ["Sure. ", "Which city is the forecast for?"])
    session.response_finish(rid, "completed")
    session.handle(SessionUpdate(None, {"input_audio_transcription": {"model": "whisper-1", "prompt": "Boston"}}), 0)
    cmds = speak_turn(session)
    spec, asr = first(cmds, Speculate), first(cmds, Transcribe)
    assert asr.prompt == "Boston Sure. Which city is the forecast for?"
    assert spec.prompt == asr.prompt  # the speculative decode is the one the turn reuses: same input


def test_the_prompt_holds_only_what_the_user_heard(session):
    speak_turn(session)
    session.transcription_done(session.conversation.items[0].id, "Tell me a story.", 1.0)
    _, rid = run_answer(session, ["Once upon a time there was a fox. ", "It lived in a dark forest by a river."],
                        audio_ms_per_piece=2000)
    session.response_finish(rid, "completed")
    item = next(i for i in session.conversation.items if i.role == "assistant")
    session.handle(ItemTruncate(None, item.id, 0, 3000), 0)
    asr = first(speak_turn(session), Transcribe)
    assert asr.prompt == "Once upon a time there was a fox. It lived in a"
