"""What a realtime session emits: typed server events, the one vocabulary every transport edge reads.

The session speaks GA event names. The events a transport acts on have their own classes — audio
(`AudioDelta`: the bytes in their `AudioFormat`, never base64), `AudioDone`, speech started/stopped, input
transcripts, `ResponseCreated` / `ResponseDone`, `ItemTruncated`, errors — so an edge matches on a class and
reads typed fields: it never parses a name in two dialects or decodes what the session encoded. The rest of the
protocol's bookkeeping (items added and done, content parts, session objects) is a `ProtocolEvent`: a GA name
with its fields, which only the Realtime JSON wire renders.

Every event has `type` (its GA name), `response_id` (the response whose lane of the outbox it travels in; None
for session-level events) and `data` (its protocol fields in wire order; values may be an `Item`, a
`ResponseInfo`, a `SessionConfig` or audio `bytes`, which each wire renders its own way). The serializers are
`realtime.protocol.Serializer` (Realtime JSON, GA and beta), `audio_server.routes_twilio_media` (Twilio Media
Streams) and `audio_server.webrtc_peer` (speaker track + `oai-events` channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from realtime.audio import AudioFormat
from realtime.items import Item, item_to_wire


class ServerEvent:
    """Base of every server event (see the module docstring for `type`, `response_id` and `data`)."""

    type: str
    response_id: str | None
    data: dict
    is_audio: ClassVar[bool] = False


@dataclass(frozen=True)
class ProtocolEvent(ServerEvent):
    """A protocol event no transport needs to act on: its GA name and fields."""

    type: str
    data: dict = field(default_factory=dict)
    response_id: str | None = None


# ---- input --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechStarted(ServerEvent):
    """Server VAD heard the user start speaking (a barge-in when a response is playing)."""

    type: ClassVar[str] = "input_audio_buffer.speech_started"
    item_id: str
    audio_start_ms: int
    response_id: ClassVar[None] = None

    @property
    def data(self) -> dict:
        return {"audio_start_ms": self.audio_start_ms, "item_id": self.item_id}


@dataclass(frozen=True)
class SpeechStopped(ServerEvent):
    type: ClassVar[str] = "input_audio_buffer.speech_stopped"
    item_id: str
    audio_end_ms: int
    response_id: ClassVar[None] = None

    @property
    def data(self) -> dict:
        return {"audio_end_ms": self.audio_end_ms, "item_id": self.item_id}


@dataclass(frozen=True)
class InputTranscriptDelta(ServerEvent):
    type: ClassVar[str] = "conversation.item.input_audio_transcription.delta"
    item_id: str
    delta: str
    response_id: ClassVar[None] = None

    @property
    def data(self) -> dict:
        return {"item_id": self.item_id, "content_index": 0, "delta": self.delta}


@dataclass(frozen=True)
class InputTranscriptCompleted(ServerEvent):
    type: ClassVar[str] = "conversation.item.input_audio_transcription.completed"
    item_id: str
    transcript: str
    seconds: float  # of audio transcribed (the usage the protocol reports)
    response_id: ClassVar[None] = None

    @property
    def data(self) -> dict:
        return {"item_id": self.item_id, "content_index": 0, "transcript": self.transcript,
                "usage": {"type": "duration", "seconds": round(self.seconds, 3)}}


@dataclass(frozen=True)
class InputTranscriptFailed(ServerEvent):
    type: ClassVar[str] = "conversation.item.input_audio_transcription.failed"
    item_id: str
    message: str
    response_id: ClassVar[None] = None

    @property
    def data(self) -> dict:
        return {"item_id": self.item_id, "content_index": 0,
                "error": {"type": "transcription_error", "code": "transcription_failed", "message": self.message,
                          "param": None}}


@dataclass(frozen=True)
class ItemTruncated(ServerEvent):
    """An assistant item was cut to what the listener heard."""

    type: ClassVar[str] = "conversation.item.truncated"
    item_id: str
    content_index: int
    audio_end_ms: int
    response_id: ClassVar[None] = None

    @property
    def data(self) -> dict:
        return {"item_id": self.item_id, "content_index": self.content_index, "audio_end_ms": self.audio_end_ms}


@dataclass(frozen=True)
class ErrorEvent(ServerEvent):
    """`error{type, code, message, param, event_id}`; the session carries on."""

    type: ClassVar[str] = "error"
    error: dict
    response_id: ClassVar[None] = None

    @property
    def code(self) -> str | None:
        return self.error.get("code")

    @property
    def data(self) -> dict:
        return {"error": self.error}


# ---- responses ----------------------------------------------------------------------------------------------
@dataclass
class ResponseInfo:
    """The `response` object of `response.created` / `response.done`."""

    id: str
    audio_out: bool
    output_format_ga: dict
    output_format_beta: str
    voice: str
    max_output_tokens: int | str
    temperature: float
    conversation: str = "auto"
    metadata: dict | None = None
    status: str = "in_progress"
    reason: str | None = None
    error: dict | None = None
    output: list[Item] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0

    def to_wire(self, ga: bool) -> dict:
        details = None
        if self.status != "in_progress" and self.status != "completed":
            details = {"type": self.status, "reason": self.reason}
            if self.error:
                details["error"] = self.error
        usage = None
        if self.status != "in_progress":
            usage = {"total_tokens": self.input_tokens + self.output_tokens, "input_tokens": self.input_tokens,
                     "output_tokens": self.output_tokens,
                     "input_token_details": {"text_tokens": self.input_tokens, "audio_tokens": 0, "cached_tokens": 0},
                     "output_token_details": {"text_tokens": self.output_tokens, "audio_tokens": 0}}
        out: dict = {"id": self.id, "object": "realtime.response", "status": self.status,
                     "status_details": details, "output": [item_to_wire(i, ga) for i in self.output],
                     "usage": usage, "metadata": self.metadata,
                     "conversation_id": "conv_default" if self.conversation == "auto" else None,
                     "max_output_tokens": self.max_output_tokens}
        if ga:
            out["output_modalities"] = ["audio"] if self.audio_out else ["text"]
            out["audio"] = {"output": {"format": self.output_format_ga, "voice": self.voice}}
        else:
            out.update(modalities=["text", "audio"] if self.audio_out else ["text"], voice=self.voice,
                       output_audio_format=self.output_format_beta, temperature=self.temperature)
        return out


@dataclass(frozen=True)
class ResponseCreated(ServerEvent):
    type: ClassVar[str] = "response.created"
    response: ResponseInfo  # a snapshot, taken when the event was made

    @property
    def response_id(self) -> str:  # type: ignore[override]
        return self.response.id

    @property
    def data(self) -> dict:
        return {"response": self.response}


@dataclass(frozen=True)
class ResponseDone(ServerEvent):
    """The last event of every response: completed | cancelled | incomplete | failed."""

    type: ClassVar[str] = "response.done"
    response: ResponseInfo  # a snapshot

    @property
    def response_id(self) -> str:  # type: ignore[override]
        return self.response.id

    @property
    def status(self) -> str:
        return self.response.status

    @property
    def reason(self) -> str | None:
        return self.response.reason

    @property
    def data(self) -> dict:
        return {"response": self.response}


@dataclass(frozen=True)
class AudioDelta(ServerEvent):
    """A piece of a response's audio: `audio` is in `format` (the session's output format) and ends `end_ms`
    into the item's audio. Wires that carry bytes take them as they are; Realtime JSON writes base64."""

    type: ClassVar[str] = "response.output_audio.delta"
    is_audio: ClassVar[bool] = True
    response_id: str
    item_id: str
    output_index: int
    audio: bytes = field(repr=False)
    format: AudioFormat
    end_ms: float

    @property
    def audio_end_ms(self) -> float:
        return self.end_ms

    @property
    def duration_ms(self) -> float:
        return self.format.duration_ms(len(self.audio))

    @property
    def data(self) -> dict:
        return {"response_id": self.response_id, "item_id": self.item_id, "output_index": self.output_index,
                "content_index": 0, "delta": self.audio}


@dataclass(frozen=True)
class AudioDone(ServerEvent):
    """A response's audio for `item_id` is complete (or was cut short by a cancel)."""

    type: ClassVar[str] = "response.output_audio.done"
    response_id: str
    item_id: str
    output_index: int

    @property
    def data(self) -> dict:
        return {"response_id": self.response_id, "item_id": self.item_id, "output_index": self.output_index,
                "content_index": 0}


@dataclass(frozen=True)
class TextDelta(ServerEvent):
    """A piece of a response's text: its spoken transcript (`spoken`) or its text output."""

    response_id: str
    item_id: str
    output_index: int
    delta: str
    spoken: bool

    @property
    def type(self) -> str:  # type: ignore[override]
        return "response.output_audio_transcript.delta" if self.spoken else "response.output_text.delta"

    @property
    def data(self) -> dict:
        return {"response_id": self.response_id, "item_id": self.item_id, "output_index": self.output_index,
                "content_index": 0, "delta": self.delta}


# ---- WebRTC playback (the edge's own, in the same vocabulary) ----------------------------------------------
@dataclass(frozen=True)
class OutputAudioBuffer(ServerEvent):
    """`output_audio_buffer.started | stopped | cleared`: what the WebRTC speaker track did."""

    kind: str  # started | stopped | cleared
    response_id: str | None

    @property
    def type(self) -> str:  # type: ignore[override]
        return f"output_audio_buffer.{self.kind}"

    @property
    def data(self) -> dict:
        return {"response_id": self.response_id}
