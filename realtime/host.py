"""One realtime session behind any transport: the session, its runner and its outbox, built in one place.

Every edge — the Realtime WebSocket, a WebRTC call, a Twilio media stream, the in-process pipeline driver —
builds a `RealtimeHost` and then only translates:

- in: audio with `append_audio(pcm, format)` (a large append is fed in slices, unified sessions encode it as
  it comes, a failure costs one append and never the session), and every other client event with
  `client_event(event)`: Realtime JSON text as a client sent it, or a typed event an edge makes itself (a
  DTMF digit, a truncate after barge-in);
- out: the typed events of `realtime.events`, in order, to the `sink` the edge gave (its one serializer).

The host decides nothing itself (the session does) and executes nothing itself (the runner does).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from realtime.audio import AudioFormat
from realtime.config import SessionConfig, Speculation
from realtime.events import ServerEvent
from realtime.items import MAX_CONVERSATION_BYTES
from realtime.outbox import MAX_QUEUED_EVENTS
from realtime.pipeline import PipelineOptions
from realtime.protocol import MAX_APPEND_BYTES, AudioAppend, ClientEvent, ProtocolError
from realtime.hub import RealtimeModels
from realtime.runner import SessionRunner
from realtime.session import RealtimeSession
from runtime.chat_api import ChatEngine

EventSink = Callable[[ServerEvent], Awaitable[None]]
EngineSource = ChatEngine | Callable[[], Awaitable[ChatEngine | None]] | None


@dataclass(frozen=True)
class SessionLimits:
    """What one session may hold (the server's settings of the same names)."""

    max_input_buffer_s: float = 600.0
    max_conversation_bytes: int = MAX_CONVERSATION_BYTES
    max_append_bytes: int = MAX_APPEND_BYTES
    max_queued_events: int = MAX_QUEUED_EVENTS


class RealtimeHost:
    """Session + runner + outbox of one connection. `engine` is the chat engine or an async loader of it;
    `on_backlog(n)` is called once when `n` events wait for an edge that does not send them (drop the client);
    `on_turn_latency(seconds, trigger)` once per response, when its first audio has been sent;
    `speculation` is what the session starts at a short pause (`realtime.config.Speculation`), and
    `on_speculation(outcome)` counts each speculative response that reached the model: committed | dropped."""

    def __init__(self, session_id: str, vad, config: SessionConfig | None, models: RealtimeModels,
                 engine: EngineSource, sink: EventSink, *, limits: SessionLimits = SessionLimits(),
                 options: PipelineOptions | None = None,
                 on_turn_latency: Callable[[float, str], None] | None = None,
                 on_backlog: Callable[[int], None] | None = None, clock: Callable[[], float] = time.perf_counter,
                 speculation: Speculation = Speculation(), on_speculation: Callable[[str], None] | None = None):
        self.session = RealtimeSession(session_id, vad, config, max_buffer_seconds=limits.max_input_buffer_s,
                                       max_conversation_bytes=limits.max_conversation_bytes, speculation=speculation,
                                       judge_text=True)  # the runner answers every verdict request
        self.runner = SessionRunner(self.session, models, engine, sink, on_turn_latency=on_turn_latency,
                                    options=options, clock=clock, max_append_bytes=limits.max_append_bytes,
                                    max_queued_events=limits.max_queued_events, on_backlog=on_backlog,
                                    on_speculation=on_speculation)

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def input_format(self) -> AudioFormat:
        """What `append_audio` takes now (the client may change it with `session.update`)."""
        return self.session.config.input_format

    def observe(self, callback: Callable[[ServerEvent], None]) -> None:
        """`callback(event)` for every event the session emits, in emission order (metrics, tests)."""
        self.runner.outbox.observe(callback)

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """`session.created` and `conversation.created` go out; the writer runs."""
        await self.runner.start()

    async def close(self) -> None:
        """Cancel and await every task of the session. What is still queued is not sent (`drain` first)."""
        await self.runner.close()

    async def drain(self, timeout: float) -> None:
        """Until every queued event is on the wire (the writer's last send has returned), or `timeout`."""
        await self.runner.drain(timeout)

    def shutdown(self) -> None:
        """The server is going away: the response in flight and pending transcriptions end now (then `drain`)."""
        self.runner.shutdown()

    # ---- input -----------------------------------------------------------------------------------------
    async def append_audio(self, pcm: bytes, format: AudioFormat) -> None:
        """Caller audio in `format`, which must be the session's input format (`input_format`): the edge
        converts, the session decodes. Never raises for the audio itself: bad bytes become an `error` event."""
        if format != self.input_format:
            raise ValueError(f"audio in {format} for a session that takes {self.input_format}")
        await self.runner.handle_event(AudioAppend(None, pcm))

    async def client_event(self, event: ClientEvent | str | bytes) -> None:
        """One client event: Realtime JSON text (a WebSocket or data channel message), or a typed event the
        edge made itself (a DTMF digit, a truncate after barge-in). Never raises: a bad one becomes `error`."""
        if isinstance(event, ClientEvent):
            await self.runner.handle_event(event)
        else:
            await self.runner.handle_text(event)

    def client_error(self, error: ProtocolError) -> None:
        """Tell the client what was wrong with something the edge refused (a binary frame, …)."""
        self.runner.protocol_error(error)
