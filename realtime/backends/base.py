"""The one protocol every response pipeline implements, and the typed outputs a response yields.

A backend is one session's executor of model work: it turns committed turns into what the LLM reads
(`transcribe`), may follow a turn while it is spoken (`audio_appended`, `speculate`), and runs responses
(`respond`). The runner (`realtime.runner`) holds one and never asks which one it is.

A response is an async generator of outputs — `TextDelta`, `AudioChunk`, `ToolCall` (runtime.chat_api's),
`Finished` — and nothing else: it never calls the session. The runner turns each output into the session's
decisions and carries them out (schedule → execute → update, as vLLM's v1 scheduler and runner). For an
`AudioChunk` the runner sends back (`asend`) a `Played` once the chunk is out — paced to the listener, so a
backend that decodes ahead knows how far the listener is, and which assistant item its audio became.

A backend that also implements `SpeculativeBackend` (the cascade) can answer a turn before it is committed: the
runner starts `respond` on the speculative transcript of the turn so far and holds its outputs unsent
(`realtime.speculation`). Its `respond` must then depend only on the request, never on the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from realtime.config import ResponseOptions
from realtime.items import Item
from realtime.session import RealtimeSession, Speculate, Transcribe
from runtime.chat_api import ChatRequest, ToolCall


@dataclass(frozen=True)
class ResponseRequest:
    """What a response is asked to answer, read from the session when it starts (its transcripts are in)."""

    response_id: str
    options: ResponseOptions
    context: tuple[Item, ...]  # the items it answers (the session's one selection: `response_context`)
    chat: ChatRequest  # the same context as a chat LLM reads it


# ---- outputs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextDelta:
    """Text of the answer (its spoken transcript when the response has audio)."""

    text: str


@dataclass(frozen=True)
class AudioChunk:
    """Answer audio: int16 mono PCM at `sample_rate`. `transcript` is the text it speaks when known (a
    synthesised sentence), so a truncation keeps only the words the listener heard."""

    pcm: np.ndarray = field(repr=False)
    sample_rate: int
    transcript: str | None = None


@dataclass(frozen=True)
class Finished:
    """The response's last output: completed | incomplete | failed."""

    status: str
    reason: str | None = None
    usage: tuple[int, int] = (0, 0)  # (prompt tokens, output tokens)
    error: dict | None = None

    @classmethod
    def failed(cls, code: str, message: str) -> Finished:
        return cls("failed", error={"type": "server_error", "code": code, "message": message})


ResponseOutput = TextDelta | AudioChunk | ToolCall | Finished


@dataclass(frozen=True)
class Played:
    """Sent back into the response for each `AudioChunk`, once all of it has gone out."""

    item_id: str | None  # the assistant item the audio belongs to (None: the response sends no audio)
    end_ms: float  # where the chunk ends in that item's audio


ResponseStream = AsyncGenerator[ResponseOutput, Played | None]


# ---- the protocol -----------------------------------------------------------------------------------------
class ResponseBackend(Protocol):
    """One session's model work, for one pipeline (cascade, unified, …)."""

    def start(self) -> None:
        """The session opened: begin loading what the first turn needs."""
        ...

    def close(self) -> None:
        """The session closed: cancel pending work and release per-session resources."""
        ...

    def audio_appended(self, session: RealtimeSession) -> None:
        """Input audio was appended (a backend may encode the turn while it is spoken)."""
        ...

    def speculate(self, cmd: Speculate) -> None:
        """The speaker paused: a backend may start on the turn so far (`cmd.key` names the span)."""
        ...

    def transcribe(self, cmd: Transcribe, session: RealtimeSession) -> asyncio.Future[str]:
        """A committed user turn → the transcript its item gets (a speculation of the same span may be reused)."""
        ...

    def respond(self, request: ResponseRequest) -> ResponseStream:
        """Run one response: its outputs, ending with `Finished` (cancellation closes the stream)."""
        ...


@runtime_checkable
class SpeculativeBackend(Protocol):
    """A backend whose responses can be speculated on: it has a transcript of the turn so far."""

    def speculative_transcript(self, key: tuple[int, int]) -> asyncio.Future[str] | None:
        """The decode `speculate` started on span `key` (left for `transcribe` to reuse), or None."""
        ...
