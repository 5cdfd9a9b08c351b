"""Executes one session's commands: transcriptions, responses, cancellation, and the outbox writer.

The runner owns every task of the session (all named `rt:<session id>:…`) and `close()` cancels and awaits
them all, so a disconnect leaves nothing running. The model work belongs to the session's response backend
(`realtime.backends`: the cascade or the unified audio LLM, chosen once by `new_backend`); the runner never
asks which one it holds. A response is the backend's stream of typed outputs, which the runner turns into the
session's decisions (`response_text`, `response_audio`, …) and carries out; its audio goes out through one
`AudioPlayout` whichever backend made it. The runner never decides anything: it asks the session.

Speculative responses (`SpeculateResponse`): when the backend can hand out the transcript of a speculative
decode (`SpeculativeBackend`), the runner starts the backend's response on the turn so far as a
`realtime.speculation.PreparedStream` — unsent — and either a response takes it over (`StartResponse.speculation`,
when the session says the speculation's request is exactly the response's) or it is closed without a trace
(`DropSpeculation`). `on_speculation("committed" | "dropped")` counts the ones that got as far as the LLM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from realtime.audio import INTERNAL_RATE
from realtime.backends import new_backend
from realtime.backends.base import (
    AudioChunk,
    Finished,
    Played,
    ResponseBackend,
    ResponseOutput,
    ResponseRequest,
    ResponseStream,
    SpeculativeBackend,
    TextDelta,
)
from realtime.events import AudioDelta, ServerEvent
from realtime.hub import RealtimeModels
from realtime.outbox import MAX_QUEUED_EVENTS, Outbox
from realtime.pipeline import PipelineOptions
from realtime.playout import AudioPlayout
from realtime.protocol import (
    MAX_APPEND_BYTES,
    AudioAppend,
    ClientEvent,
    ProtocolError,
    error_event,
    parse_client_event,
)
from realtime.session import (
    CancelResponse,
    Command,
    DropSpeculation,
    RealtimeSession,
    Send,
    Speculate,
    SpeculateResponse,
    StartResponse,
    Transcribe,
)
from realtime.speculation import PreparedStream
from realtime.tasks import TaskSet
from runtime.chat_api import ChatEngine, ToolCall

log = logging.getLogger(__name__)
APPEND_SLICE_S = 0.5


class SessionRunner:
    def __init__(self, session: RealtimeSession, models: RealtimeModels,
                 engine: ChatEngine | Callable[[], Awaitable[ChatEngine | None]] | None,
                 send: Callable[[ServerEvent], Awaitable[None]],
                 on_turn_latency: Callable[[float, str], None] | None = None,
                 options: PipelineOptions | None = None, clock: Callable[[], float] = time.perf_counter,
                 *, max_append_bytes: int = MAX_APPEND_BYTES, max_queued_events: int = MAX_QUEUED_EVENTS,
                 on_backlog: Callable[[int], None] | None = None, backend: ResponseBackend | None = None,
                 on_speculation: Callable[[str], None] | None = None):
        """`send` takes the session's typed events in order (the edge's serializer: `realtime.host`).
        `max_append_bytes` caps one append's decoded audio; `on_backlog(n)` is called once if more
        than `max_queued_events` events wait for the client (it is not reading: the edge drops it).
        `backend` replaces the one `models.pipeline` picks (tests drive the runner with their own).
        `on_speculation(outcome)` once per speculative response that reached the backend: committed | dropped."""
        self.session, self.models = session, models
        self.max_append_bytes = max_append_bytes
        self.options, self.clock = options or PipelineOptions(), clock
        self._send, self._on_turn_latency = send, on_turn_latency
        self.outbox = Outbox(self._write, self._sent, max_queued=max_queued_events, on_overflow=on_backlog)
        self.tasks = TaskSet(f"rt:{session.id}", session.id)
        self.responses: dict[str, asyncio.Task] = {}
        self.transcripts: dict[str, asyncio.Task] = {}  # item id → task that records its transcript
        self.turn_latencies: list[float] = []
        # speculation id → the task preparing it (its result: the running stream, or None if it never started)
        self.speculations: dict[str, asyncio.Task[PreparedStream | None]] = {}
        self.speculation_counts = {"committed": 0, "dropped": 0}
        self._prepared: set[PreparedStream] = set()  # every speculative stream not yet closed
        self._on_speculation = on_speculation
        self.closed = False
        self.backend: ResponseBackend = backend or new_backend(session.id, models, engine, self.options)

    # ---- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self.tasks.spawn(self.outbox.run(), "writer")
        self.backend.start()
        self.execute(self.session.start())

    async def close(self) -> None:
        """Cancel and await every task of the session (responses, ASR waits, the writer)."""
        self.closed = True
        await self.tasks.cancel_all()
        for prepared in list(self._prepared):  # a pump cancelled while it waited leaves its stream open: close it
            await prepared.aclose()
        for fut in self.transcripts.values():
            fut.cancel()
        self.transcripts.clear()
        self.responses.clear()
        self.speculations.clear()  # their tasks (and pumps) were the TaskSet's: cancelled above
        self.backend.close()

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every queued event has been written, the writer's send in progress included (used
        before a graceful close: cancelling the writer mid-send would lose the event it was sending)."""
        try:
            await asyncio.wait_for(self.outbox.flushed(), timeout)
        except TimeoutError:
            log.info("[%s] %d events still unsent after %.1f s", self.session.id, self.outbox.queued, timeout)

    # ---- input ---------------------------------------------------------------------------------------
    async def handle_text(self, text: str | bytes) -> None:
        """One client message. Never raises for bad input: it becomes an `error` event.

        A large append (up to 15 MiB is allowed: minutes of audio) is fed to the session in slices of
        `APPEND_SLICE_S` with a yield between them, so VAD over it never stalls the event loop that every
        session's audio and control events share."""
        try:
            event = parse_client_event(text, self.max_append_bytes)
        except ProtocolError as exc:
            self.execute([Send(error_event(exc))])
            return
        await self.handle_event(event)

    async def handle_event(self, event: ClientEvent) -> None:
        """One typed client event, from any edge (`handle_text`'s guard: a failure becomes an `error`)."""
        try:
            await self._handle(event)
        except Exception:  # a bug must cost this one event, not the session (tests/fuzz hunts for them)
            log.exception("[%s] handling %s failed", self.session.id, type(event).__name__)
            self.execute([Send(error_event(ProtocolError(
                "the server failed to handle this event; it was skipped", code="internal_error",
                type="server_error", event_id=event.event_id)))])

    async def _handle(self, event) -> None:
        if isinstance(event, AudioAppend):
            fmt = self.session.config.input_format
            size = int(fmt.rate * APPEND_SLICE_S) * fmt.bytes_per_sample
            if len(event.audio) > size:
                for i in range(0, len(event.audio), size):
                    piece = AudioAppend(event.event_id, event.audio[i:i + size])
                    self.execute(self.session.handle(piece, self.clock()))
                    self.backend.audio_appended(self.session)
                    await asyncio.sleep(0)
                return
        self.execute(self.session.handle(event, self.clock()))
        if isinstance(event, AudioAppend):
            self.backend.audio_appended(self.session)

    def protocol_error(self, exc: ProtocolError) -> None:
        self.execute([Send(error_event(exc))])

    def shutdown(self, code: str = "server_shutdown", message: str = "the server is shutting down") -> None:
        """The session is about to close (server shutdown): the response in progress ends now with
        `response.done{cancelled}` and every pending transcription with `…transcription.failed`, so the
        client gets a closing event for everything it started. Follow with `drain()` and `close()`."""
        for task in list(self.transcripts.values()):  # a result arriving now would follow its failure
            task.cancel()
        self.execute(self.session.shutdown(code, message))

    def _response_ended(self, response_id: str, task: asyncio.Task) -> None:
        """A response task is over. If the session still has that response live, the task was cancelled
        from outside or died without finishing it: finish it here, so `response.created` still gets its
        `response.done` and the session can answer again."""
        self.responses.pop(response_id, None)
        if self.closed or self.session.live(response_id) is None:
            return
        if task.cancelled():
            self.execute(self.session.response_finish(response_id, "cancelled"))
        else:
            error = task.exception()
            self.execute(self.session.response_finish(response_id, "failed", error={
                "type": "server_error", "code": "response_failed",
                "message": f"{type(error).__name__}: {error}" if error else "the response ended unfinished"}))

    # ---- execution -----------------------------------------------------------------------------------
    def execute(self, commands: list[Command]) -> None:
        if self.closed:
            return
        for cmd in commands:
            if isinstance(cmd, Send):
                self.outbox.put(cmd.event, cmd.urgent)
            elif isinstance(cmd, CancelResponse):
                self.outbox.drop(cmd.response_id)
                task = self.responses.pop(cmd.response_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(cmd, StartResponse):
                task = self.tasks.spawn(self._respond(cmd), f"response:{cmd.response_id}")
                self.responses[cmd.response_id] = task
                task.add_done_callback(lambda t, rid=cmd.response_id: self._response_ended(rid, t))
            elif isinstance(cmd, Transcribe):
                fut = self.backend.transcribe(cmd, self.session)
                task = self.tasks.spawn(self._finish_transcript(cmd, fut), f"asr:{cmd.item_id}")
                self.transcripts[cmd.item_id] = task
                task.add_done_callback(lambda _t, item_id=cmd.item_id: self.transcripts.pop(item_id, None))
            elif isinstance(cmd, Speculate):
                self.backend.speculate(cmd)
                if cmd.judge_end is not None:
                    self.tasks.spawn(self._judge_turn(cmd), f"judge:{cmd.key}")
            elif isinstance(cmd, SpeculateResponse):
                self._speculate_response(cmd)
            elif isinstance(cmd, DropSpeculation):
                task = self.speculations.pop(cmd.speculation_id, None)
                if task is not None:
                    self.tasks.spawn(self._discard(task, "the turn went on"), f"drop:{cmd.speculation_id}")
            else:
                raise TypeError(f"unknown command {cmd!r}")

    # ---- the words' verdict on the turn (semantic_vad) --------------------------------------------------
    async def _judge_turn(self, cmd: Speculate) -> None:
        """P(end) of the words up to the pause, from the backend's chat model; every request gets an answer (None:
        no verdict — no speculative decode of the span, a backend or engine that cannot judge, a failure)."""
        assert cmd.judge_end is not None
        p_end: float | None = None
        judge = getattr(self.backend, "turn_end_probability", None)
        transcript = self.backend.speculative_transcript(cmd.key) \
            if judge is not None and isinstance(self.backend, SpeculativeBackend) else None
        try:
            if transcript is not None:
                text = (await asyncio.shield(transcript)).strip()
                if text:
                    p_end = await judge(self.session.turn_messages(text))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("[%s] the end-of-turn verdict failed; the audio decides this pause", self.session.id)
        self.execute(self.session.turn_verdict(cmd.judge_end, p_end))

    # ---- speculative responses ------------------------------------------------------------------------
    def _speculate_response(self, cmd: SpeculateResponse) -> None:
        backend = self.backend
        if not isinstance(backend, SpeculativeBackend):
            return  # this pipeline cannot answer a turn before it is committed
        transcript = backend.speculative_transcript(cmd.key)
        if transcript is None:
            return  # no speculative decode of this span (one was still running): the turn is answered as usual
        sid = cmd.speculation_id
        self.speculations[sid] = self.tasks.spawn(self._prepare(cmd, transcript), f"prepare:{sid}")

    async def _prepare(self, cmd: SpeculateResponse, transcript: asyncio.Future[str]) -> PreparedStream | None:
        """The speculative transcript → the response the session would run on it, started (nothing is sent)."""
        try:
            text = await asyncio.shield(transcript)  # the decode is the committed turn's too: never cancel it
        except asyncio.CancelledError:
            raise
        except Exception:
            return None  # the committed turn reports the failure
        audio_ms = (cmd.key[1] - cmd.key[0]) * 1000 / INTERNAL_RATE
        built = self.session.speculation_request(cmd.speculation_id, text, audio_ms)
        if built is None:
            return None  # dropped or already taken by the response while the decode ran
        options, context, chat = built
        stream = self.backend.respond(ResponseRequest(cmd.speculation_id, options, tuple(context), chat))
        log.debug("[%s] speculation %s started on %r", self.session.id, cmd.speculation_id, text)
        prepared = PreparedStream(cmd.speculation_id, options, chat, stream, self.tasks.spawn,
                                  on_close=self._prepared.discard)
        self._prepared.add(prepared)
        return prepared

    async def _discard(self, task: asyncio.Task[PreparedStream | None], why: str) -> None:
        """Forget a speculation: cancel its preparation, or close the stream it started."""
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        prepared = None if task.cancelled() or task.exception() is not None else task.result()
        if prepared is None:
            return
        await prepared.aclose()
        self._count("dropped", prepared, why)

    def _count(self, outcome: str, prepared: PreparedStream, why: str) -> None:
        self.speculation_counts[outcome] += 1
        c = self.speculation_counts
        log.debug("[%s] speculation %s %s (%s; %d outputs prepared); committed %d, dropped %d", self.session.id,
                  prepared.id, outcome, why, prepared.prepared, c["committed"], c["dropped"])
        if self._on_speculation is not None:
            self._on_speculation(outcome)

    async def _take_over(self, rid: str, speculation_id: str) -> PreparedStream | None:
        """The prepared speculation response `rid` may run as, if it answered exactly what `rid` answers."""
        task = self.speculations.pop(speculation_id, None)
        if task is None:
            return None
        if not task.done():  # still waiting for its transcript: nothing started that the response could use
            await self._discard(task, "not started by the turn's end")
            return None
        prepared = None if task.cancelled() or task.exception() is not None else task.result()
        if prepared is None:
            return None
        if not self.session.speculation_matches(rid, prepared.options, prepared.chat):
            await prepared.aclose()
            self._count("dropped", prepared, "the response's request differs")
            return None
        self._count("committed", prepared, f"taken over by {rid}")
        return prepared

    # ---- responses -----------------------------------------------------------------------------------
    async def _respond(self, cmd: StartResponse) -> None:
        """Response `cmd.response_id`: the backend's outputs → the session's decisions → carried out."""
        rid = cmd.response_id
        try:
            await self._wait_transcripts(cmd.wait_for)
        except asyncio.CancelledError:
            self._forget_speculation(cmd.speculation)
            raise
        st, context = self.session.live(rid), self.session.response_context(rid)
        chat = self.session.chat_request(rid)
        if st is None or context is None or chat is None:
            self._forget_speculation(cmd.speculation)
            return  # cancelled while waiting
        request = ResponseRequest(rid, st.options, tuple(context), chat)
        playout = AudioPlayout(st.options.output_format, self.options.delta_ms, self.options.lead_ms,
                               self.outbox.room)
        stream: ResponseStream | PreparedStream | None = None
        if cmd.speculation is not None:
            stream = await self._take_over(rid, cmd.speculation)
        if stream is None:
            stream = self.backend.respond(request)
        try:
            played: Played | None = None
            while True:
                try:
                    output = await stream.asend(played)
                except StopAsyncIteration:
                    break
                played = await self._apply(rid, output, playout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("[%s] response %s failed", self.session.id, rid)
            self.execute(self.session.response_finish(rid, "failed", error={
                "type": "server_error", "code": "response_failed", "message": f"{type(exc).__name__}: {exc}"}))
        finally:
            await stream.aclose()

    def _forget_speculation(self, speculation_id: str | None) -> None:
        task = self.speculations.pop(speculation_id, None) if speculation_id is not None else None
        if task is not None:
            self.tasks.spawn(self._discard(task, "its response ended first"), f"drop:{speculation_id}")

    async def _apply(self, rid: str, output: ResponseOutput, playout: AudioPlayout) -> Played | None:
        """One output of response `rid`, carried out; an `AudioChunk` returns once it has all gone out."""
        if isinstance(output, TextDelta):
            self.execute(self.session.response_text(rid, output.text))
        elif isinstance(output, AudioChunk):
            data = playout.encode(output.pcm, output.sample_rate)
            if output.transcript is not None:
                start = playout.position_ms
                self.session.response_sentence(rid, output.transcript, start, start + playout.duration_ms(data))
            item_id = None
            async for piece in playout.pace(data):
                item_id = self._audio(rid, piece.data, piece.start_ms, piece.duration_ms) or item_id
            return Played(item_id, playout.position_ms)
        elif isinstance(output, ToolCall):
            self._flush(rid, playout)
            self.execute(self.session.response_tool_call(rid, output))
        elif isinstance(output, Finished):
            self._flush(rid, playout)
            self.execute(self.session.response_finish(rid, output.status, reason=output.reason, error=output.error,
                                                      usage=output.usage))
        else:
            raise TypeError(f"unknown response output {output!r}")
        return None

    def _flush(self, rid: str, playout: AudioPlayout) -> None:
        """The encoder's tail goes out before what ends the audio (a tool call, the response's end)."""
        tail = playout.finish()
        if tail is not None:
            self._audio(rid, tail.data, tail.start_ms, tail.duration_ms)

    def _audio(self, rid: str, data: bytes, start_ms: float, duration_ms: float) -> str | None:
        """Send one piece of audio; returns the assistant item it went into (None: the response takes none)."""
        commands = self.session.response_audio(rid, data, start_ms, duration_ms)
        self.execute(commands)
        return next((c.event.item_id for c in commands if isinstance(c, Send) and isinstance(c.event, AudioDelta)),
                    None)

    async def _finish_transcript(self, cmd: Transcribe, fut: asyncio.Future) -> None:
        seconds = len(cmd.audio) / INTERNAL_RATE
        try:
            text = await asyncio.shield(fut)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("[%s] transcription of %s failed", self.session.id, cmd.item_id)
            self.execute(self.session.transcription_failed(cmd.item_id, f"{type(exc).__name__}: {exc}",
                                                           cmd.emit_events))
            return
        self.execute(self.session.transcription_done(cmd.item_id, text, seconds, cmd.emit_events))

    async def _wait_transcripts(self, item_ids: tuple[str, ...]) -> None:
        """Until the listed items' transcripts are in the session (their tasks are done), or a timeout."""
        tasks = [self.transcripts[i] for i in item_ids if i in self.transcripts]
        if tasks:
            await asyncio.wait(tasks, timeout=self.options.transcript_timeout_s)

    # ---- output --------------------------------------------------------------------------------------
    async def _write(self, event: ServerEvent) -> None:
        await self._send(event)

    def _sent(self, event: ServerEvent) -> None:
        if event.is_audio and event.response_id is not None:
            first = self.session.audio_delta_sent(event.response_id, event.audio_end_ms or 0.0, self.clock())
            if first is not None:
                latency, trigger = first
                self.turn_latencies.append(latency)
                if self._on_turn_latency is not None:
                    self._on_turn_latency(latency, trigger)
