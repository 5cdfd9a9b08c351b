"""Fuzzing the Realtime server-event serializer with events the session itself produces.

Random sequences of session operations — audio appends that start and end turns (energy VAD), commits,
items, responses producing text, audio and tool calls, finishing with every status, cancels, truncation,
transcription results, session updates, and finally a shutdown — drive a `RealtimeSession`. Every event
it emits is serialized in both dialects and must: be strict JSON that round-trips; validate against the
official `openai` SDK's pydantic model for its type (GA or beta); carry a fresh, increasing `event_id`.
The stream as a whole keeps the protocol's promises: every `response.created` gets exactly one
`response.done`, and every committed user item exactly one transcription result.
"""

from __future__ import annotations

import base64
import json
import typing

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent

from realtime.protocol import Dialect, ProtocolError, Serializer, parse_client_event
from realtime.session import RealtimeSession, Send, Transcribe
from runtime.chat_api import ToolCall
from tests.fuzz.strategies import fuzz_settings
from tests.realtime.fakes import EnergyVAD, silence, tone


def models_by_type(union) -> dict[str, type]:
    out: dict[str, type] = {}
    args = typing.get_args(union)
    if args and typing.get_origin(args[0]) is typing.Union:
        args = typing.get_args(args[0])
    for cls in args:
        field = cls.model_fields.get("type")
        for name in typing.get_args(field.annotation) if field is not None else ():
            out[name] = cls
    return out


SDK_MODELS = {Dialect.GA: models_by_type(RealtimeServerEvent), Dialect.BETA: models_by_type(BetaServerEvent)}
# The beta SDK types `session.model` as a Literal of OpenAI's model names; ours are our own.
KNOWN_DIFFERENCES = {(Dialect.BETA, ("session", "model"))}

text_piece = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
operation = st.one_of(
    st.tuples(st.just("turn"), st.floats(0.3, 1.5)),  # speech, then silence long enough to end the turn
    st.tuples(st.just("speech"), st.floats(0.2, 1.5)),
    st.tuples(st.just("silence"), st.floats(0.1, 1.0)),
    st.tuples(st.just("client"), st.sampled_from([
        '{"type": "input_audio_buffer.commit"}', '{"type": "input_audio_buffer.clear"}', '{"type": "response.create"}',
        '{"type": "response.cancel"}',
        '{"type": "response.create", "response": {"output_modalities": ["text"], "conversation": "none"}}',
        '{"type": "conversation.item.create", "item": {"type": "message", "role": "user", '
        '"content": [{"type": "input_text", "text": "hi"}]}}',
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": null}}}}',
        '{"type": "session.update", "session": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}}}',
        '{"type": "session.update", "session": {"modalities": ["text"], "input_audio_transcription": null}}',
        '{"type": "session.update", "session": {"tools": [{"type": "function", "name": "f"}], "voice": "joe"}}',
    ])),
    st.tuples(st.just("text"), text_piece),
    st.tuples(st.just("audio"), st.integers(1, 4800)),
    st.tuples(st.just("text"), text_piece),
    st.tuples(st.just("audio"), st.integers(1, 4800)),
    st.tuples(st.just("tool"), text_piece, text_piece),
    st.tuples(st.just("finish"), st.sampled_from([("completed", None), ("incomplete", "max_output_tokens"),
                                                  ("failed", None), ("cancelled", "client_cancelled")])),
    st.tuples(st.just("transcribed"), text_piece),
    st.tuples(st.just("transcription_failed")),
    st.tuples(st.just("truncate"), st.integers(0, 3000)),
    st.tuples(st.just("retrieve_or_delete"), st.booleans()),
)


class Driver:
    """Applies operations to a session like the runner and pipeline would, collecting every command."""

    def __init__(self) -> None:
        self.session = RealtimeSession("sess_fuzz01", EnergyVAD())
        self.sent: list[Send] = []
        self.pending: list[Transcribe] = []
        self.announced: set[str] = set()  # items committed while transcription events were on
        self.now = 1.0
        self.position = 0.0
        self.run(self.session.start())

    def run(self, commands: list) -> None:
        for cmd in commands:
            if isinstance(cmd, Send):
                self.sent.append(cmd)
            elif isinstance(cmd, Transcribe):
                self.pending.append(cmd)
                if cmd.emit_events:
                    self.announced.add(cmd.item_id)

    def client(self, text: str) -> None:
        try:
            event = parse_client_event(text)
        except ProtocolError as exc:  # not expected for these fixed messages
            raise AssertionError(exc.message) from None
        self.run(self.session.handle(event, self.now))

    def apply(self, op: tuple) -> None:
        s, kind = self.session, op[0]
        self.now += 0.1
        active = s.active.id if s.active is not None else None
        if kind == "turn":
            pcm = np.concatenate([tone(op[1]), silence(0.9)])
            self.client(json.dumps({"type": "input_audio_buffer.append",
                                    "audio": base64.b64encode(pcm.tobytes()).decode()}))
        elif kind in ("speech", "silence"):
            pcm = tone(op[1]) if kind == "speech" else silence(op[1])
            self.client(json.dumps({"type": "input_audio_buffer.append",
                                    "audio": base64.b64encode(pcm.tobytes()).decode()}))
        elif kind == "client":
            self.client(op[1])
        elif kind == "text" and active:
            self.run(s.response_text(active, op[1]))
        elif kind == "audio" and active:
            s.response_sentence(active, "words here", self.position, self.position + op[1] / 24)
            self.run(s.response_audio(active, b"\x01\x00" * op[1], self.position, op[1] / 24))
            self.position += op[1] / 24
            s.audio_delta_sent(active, self.position, self.now)
        elif kind == "tool" and active:
            self.run(s.response_tool_call(active, ToolCall(f"call_{len(self.sent)}", op[1] or "f", op[2])))
        elif kind == "finish" and active:
            status, reason = op[1]
            error = {"type": "server_error", "code": "x", "message": "y"} if status == "failed" else None
            self.run(s.response_finish(active, status, reason=reason, error=error, usage=(3, 4)))
            self.position = 0.0
        elif kind == "transcribed" and self.pending:
            cmd = self.pending.pop(0)
            self.run(s.transcription_done(cmd.item_id, op[1], 1.0, cmd.emit_events))
        elif kind == "transcription_failed" and self.pending:
            cmd = self.pending.pop(0)
            self.run(s.transcription_failed(cmd.item_id, "nope", cmd.emit_events))
        elif kind == "truncate":
            assistant = [i for i in s.conversation.items if i.role == "assistant" and i.content
                         and i.content[0].type == "audio"]
            if assistant:
                self.client(json.dumps({"type": "conversation.item.truncate", "item_id": assistant[-1].id,
                                        "content_index": 0, "audio_end_ms": op[1]}))
        elif kind == "retrieve_or_delete" and s.conversation.items:
            item = s.conversation.items[0].id
            self.client(json.dumps({"type": "conversation.item.retrieve" if op[1] else "conversation.item.delete",
                                    "item_id": item}))


def sdk_errors(dialect: Dialect, wire: dict) -> list[str]:
    model = SDK_MODELS[dialect].get(wire["type"])
    if model is None:
        return []  # an event the SDK version has no model for (there are none today; see the test below)
    try:
        model.model_validate(wire)
    except Exception as exc:  # pydantic.ValidationError
        return [f"{e['loc']}: {e['msg']}" for e in exc.errors()
                if (dialect, tuple(e["loc"])) not in KNOWN_DIFFERENCES]
    return []


@fuzz_settings(150)
@given(st.lists(operation, min_size=1, max_size=25))
def test_session_events_serialize_to_valid_sdk_events(ops):
    driver = Driver()
    for op in ops:
        driver.apply(op)
    driver.run(driver.session.shutdown("server_shutdown", "the server is shutting down"))
    for dialect in (Dialect.GA, Dialect.BETA):
        ser = Serializer(dialect, driver.session.id)
        ids = []
        wires = [w for w in (ser(c.event) for c in driver.sent) if w is not None]
        for wire in wires:
            text = json.dumps(wire, allow_nan=False)
            assert json.loads(text) == wire
            ids.append(wire["event_id"])
            problems = sdk_errors(dialect, json.loads(text))
            assert not problems, (dialect, wire["type"], problems, wire)
        assert len(set(ids)) == len(ids) and ids == sorted(ids)
        created = [w["response"]["id"] for w in wires if w["type"] == "response.created"]
        done = [w["response"]["id"] for w in wires if w["type"] == "response.done"]
        assert sorted(created) == sorted(done), "every response.created gets exactly one response.done"
    results = [c.event.data["item_id"] for c in driver.sent if c.event.type in (
        "conversation.item.input_audio_transcription.completed", "conversation.item.input_audio_transcription.failed")]
    assert len(results) == len(set(results)), "an item got two transcription results"
    deleted = {c.event.data["item_id"] for c in driver.sent if c.event.type == "conversation.item.deleted"}
    if driver.session.config.transcription is not None:  # (with transcription off nothing is announced)
        # (an item the client deleted needs no transcript any more)
        assert driver.announced - deleted <= set(results), "a committed item never got its transcription result"
    assert not driver.session.pending_transcripts and driver.session.active is None


def test_every_ga_name_we_emit_has_an_sdk_model():
    emitted = {"session.created", "session.updated", "conversation.created", "error", "input_audio_buffer.speech_started",
               "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "input_audio_buffer.cleared",
               "conversation.item.added", "conversation.item.done", "conversation.item.retrieved",
               "conversation.item.deleted", "conversation.item.truncated",
               "conversation.item.input_audio_transcription.delta",
               "conversation.item.input_audio_transcription.completed",
               "conversation.item.input_audio_transcription.failed", "response.created", "response.done",
               "response.output_item.added", "response.output_item.done", "response.content_part.added",
               "response.content_part.done", "response.output_text.delta", "response.output_text.done",
               "response.output_audio.delta", "response.output_audio.done", "response.output_audio_transcript.delta",
               "response.output_audio_transcript.done", "response.function_call_arguments.delta",
               "response.function_call_arguments.done"}
    assert emitted <= set(SDK_MODELS[Dialect.GA]), emitted - set(SDK_MODELS[Dialect.GA])


def test_shutdown_response_done_is_a_valid_cancelled_response():
    driver = Driver()
    driver.apply(("speech", 1.0))
    driver.apply(("silence", 1.0))
    assert driver.session.active is not None
    driver.apply(("text", "Hello."))
    driver.run(driver.session.shutdown("server_shutdown", "the server is shutting down"))
    ser = Serializer(Dialect.GA, driver.session.id)
    wire = next(ser(c.event) for c in driver.sent if c.event.type == "response.done")
    assert wire["response"]["status"] == "cancelled"
    assert wire["response"]["status_details"]["error"]["code"] == "server_shutdown"
    assert not sdk_errors(Dialect.GA, wire)
    failed = [c for c in driver.sent if c.event.type == "conversation.item.input_audio_transcription.failed"]
    assert len(failed) == 1  # the committed turn's transcription was still pending
