"""Executes one session's commands: ASR jobs, response pipelines, cancellation, and the outbox writer.

The runner owns every task of the session (all named `rt:<session id>:…`) and `close()` cancels and awaits
them all, so a disconnect leaves nothing running. Transcriptions and sentence synthesis run on small pools of
their own (sized so decodes do not oversubscribe the cores, and so a short sentence never queues behind a
long decode); the LLM is the shared `ChatEngine`. The runner never decides anything: it asks the session.
With `Settings.pipeline = "unified"` (`engine_provider.pipeline_kind`) the same commands run the unified
path instead (`realtime.unified_pipeline`): turns are tokenized, not transcribed, and responses are decoded
by the audio LLM and vocoded (`realtime.unified_response`); the runner then uses no chat engine, ASR or TTS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from realtime.engine_provider import pipeline_kind
from realtime.events import ServerEvent
from realtime.outbox import MAX_QUEUED_EVENTS, Outbox
from realtime.pipeline import PipelineOptions, ResponseRun
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
    RealtimeSession,
    Send,
    Speculate,
    StartResponse,
    Transcribe,
)
from runtime.chat_api import ChatEngine

log = logging.getLogger(__name__)
_MAX_SPECULATIVE = 2
APPEND_SLICE_S = 0.5
# Sentence synthesis is short and on the critical path; ASR decodes take seconds. Sharing one small pool
# would queue a 0.1 s sentence behind other sessions' decodes, so realtime TTS has its own threads
# (unless the hub offers a `tts_executor`).
_TTS_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rt-tts")
_ASR_POOLS: dict[int, ThreadPoolExecutor] = {}


def asr_pool(threads_per_decode: int) -> ThreadPoolExecutor:
    """Realtime transcriptions run at most cores ÷ threads-per-decode at a time. Two 2-thread Whisper decodes
    on 2 cores both finish after ~2.3× the time of one; one after the other, the first is ready in 1×, the
    second in 2×: a lower mean turn latency, and the same throughput."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, cores // max(1, threads_per_decode))
    if workers not in _ASR_POOLS:
        _ASR_POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rt-asr")
    return _ASR_POOLS[workers]


class SpeechModels(Protocol):
    """What a session needs from the model hub (audio_server.models.ModelHub fits)."""

    executor: object

    def asr(self, name: str | None = None): ...

    def tts(self): ...

    def vad(self): ...


class SessionRunner:
    def __init__(self, session: RealtimeSession, models: SpeechModels,
                 engine: ChatEngine | Callable[[], Awaitable[ChatEngine | None]] | None,
                 send: Callable[[ServerEvent], Awaitable[None]],
                 on_turn_latency: Callable[[float, str], None] | None = None,
                 options: PipelineOptions | None = None, clock: Callable[[], float] = time.perf_counter,
                 *, max_append_bytes: int = MAX_APPEND_BYTES, max_queued_events: int = MAX_QUEUED_EVENTS,
                 on_backlog: Callable[[int], None] | None = None):
        """`send` takes the session's typed events in order (the edge's serializer: `realtime.host`).
        `max_append_bytes` caps one append's decoded audio; `on_backlog(n)` is called once if more
        than `max_queued_events` events wait for the client (it is not reading: the edge drops it)."""
        self.session, self.models = session, models
        self.max_append_bytes = max_append_bytes
        # `engine` is the engine itself, or an async loader (the first load can take a while: the session
        # opens at once and its first response waits for the load).
        self._engine_loader = engine if callable(engine) and not isinstance(engine, ChatEngine) else None
        self._engine = None if self._engine_loader is not None else engine
        self._engine_future: asyncio.Future | None = None
        self.options, self.clock = options or PipelineOptions(), clock
        self._send, self._on_turn_latency = send, on_turn_latency
        self.outbox = Outbox(self._write, self._sent, max_queued=max_queued_events, on_overflow=on_backlog)
        self.tasks: set[asyncio.Task] = set()
        self.responses: dict[str, asyncio.Task] = {}
        self.transcripts: dict[str, asyncio.Task] = {}  # item id → task that records its transcript
        self.speculative: dict[tuple[int, int], asyncio.Future] = {}
        self.turn_latencies: list[float] = []
        self.closed = False
        # The unified audio-LLM path (Settings.pipeline): its per-session state; None = the cascade.
        self.unified = None
        if pipeline_kind(models) == "unified":
            from realtime.unified_pipeline import UnifiedSession

            self.unified = UnifiedSession(session.id, models.unified)

    # ---- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._spawn(self.outbox.run(), "writer")
        if self.unified is not None:
            self.unified.start()  # the unified path needs no chat engine: load its models instead
        elif self._engine_loader is not None:
            self._engine_future = asyncio.ensure_future(self._engine_loader())
            self._engine_future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.execute(self.session.start())

    async def engine(self) -> ChatEngine | None:
        """The chat engine, once loaded. Raises what the loader raised."""
        if self._engine_future is not None:
            return await asyncio.shield(self._engine_future)
        return self._engine

    async def close(self) -> None:
        """Cancel and await every task of the session (responses, ASR waits, the writer)."""
        self.closed = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fut in (*self.transcripts.values(), *self.speculative.values()):
            fut.cancel()
        if self._engine_future is not None and not self._engine_future.done():
            self._engine_future.cancel()
        self.transcripts.clear()
        self.speculative.clear()
        self.responses.clear()
        if self.unified is not None:
            self.unified.close()

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every queued event has been written, the writer's send in progress included (used
        before a graceful close: cancelling the writer mid-send would lose the event it was sending)."""
        try:
            await asyncio.wait_for(self.outbox.flushed(), timeout)
        except TimeoutError:
            log.info("[%s] %d events still unsent after %.1f s", self.session.id, self.outbox.queued, timeout)

    def _spawn(self, coro, what: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"rt:{self.session.id}:{what}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("[%s] task %s failed", self.session.id, task.get_name(), exc_info=task.exception())

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
                    self._appended()
                    await asyncio.sleep(0)
                return
        self.execute(self.session.handle(event, self.clock()))
        if isinstance(event, AudioAppend):
            self._appended()

    def _appended(self) -> None:
        if self.unified is not None:  # the unified path encodes the user's turn while it is spoken
            self.unified.audio_appended(self.session)

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
                if self.unified is not None:
                    from realtime.unified_response import UnifiedResponseRun

                    run = UnifiedResponseRun(cmd.response_id, cmd.wait_for, self.session, self.unified, self.execute,
                                             self._wait_transcripts, self.outbox.room, self.options)
                else:
                    tts_pool = getattr(self.models, "tts_executor", None) or _TTS_POOL
                    run = ResponseRun(cmd.response_id, cmd.wait_for, self.session, self.engine, self._tts(),
                                      tts_pool, self.execute, self._wait_transcripts, self.outbox.room, self.options)
                task = self._spawn(run.run(), f"response:{cmd.response_id}")
                self.responses[cmd.response_id] = task
                task.add_done_callback(lambda t, rid=cmd.response_id: self._response_ended(rid, t))
            elif isinstance(cmd, Transcribe):
                fut = self.speculative.pop(cmd.key, None) if cmd.key is not None else None
                if self.unified is not None:  # the turn becomes audio ids, not text
                    fut = self.unified.transcribe(cmd, self.session)
                elif fut is None:
                    fut = self._asr(cmd.audio, cmd.model, cmd.language, cmd.prompt)
                task = self._spawn(self._finish_transcript(cmd, fut), f"asr:{cmd.item_id}")
                self.transcripts[cmd.item_id] = task
                task.add_done_callback(lambda _t, item_id=cmd.item_id: self.transcripts.pop(item_id, None))
            elif isinstance(cmd, Speculate):
                if self.unified is not None:
                    continue  # the unified encoder already follows the turn as it is spoken
                # One speculative decode at a time: on 2 cores a wasted one (the speaker went on) costs as
                # much as the real one, so a pause inside speech while one runs does not start another.
                if any(not f.done() for f in self.speculative.values()):
                    continue
                self.speculative[cmd.key] = self._asr(cmd.audio, cmd.model, cmd.language, cmd.prompt)
                while len(self.speculative) > _MAX_SPECULATIVE:
                    self.speculative.pop(next(iter(self.speculative)))
            else:
                raise TypeError(f"unknown command {cmd!r}")

    def _tts(self):
        return self.models.tts()

    def _asr(self, audio: np.ndarray, model: str, language: str | None, prompt: str | None) -> asyncio.Future:
        name = None
        resolve = getattr(self.models, "resolve_asr_name", None)
        if resolve is not None:
            try:
                name = resolve(model)
            except ValueError:
                log.info("[%s] transcription model %r unknown; using the default", self.session.id, model)

        settings = getattr(self.models, "settings", None)
        beam = getattr(settings, "asr_beam_size", 1)

        def run() -> str:
            return self.models.asr(name).transcribe_utterance(audio, language or "en", prompt, beam_size=beam)

        pool = asr_pool(getattr(settings, "asr_threads", 2)) if settings is not None else self.models.executor
        return asyncio.get_running_loop().run_in_executor(pool, run)

    async def _finish_transcript(self, cmd: Transcribe, fut: asyncio.Future) -> None:
        seconds = len(cmd.audio) / 16000
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
