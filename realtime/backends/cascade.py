"""The cascade backend: Whisper transcribes each turn (speculatively at a pause), the shared chat engine
answers, Piper speaks it (`realtime.pipeline.CascadeResponse`). It is a `SpeculativeBackend`: a response can
start on the speculative transcript of a pause, unsent, and be taken over when the turn ends there.

Transcriptions and sentence synthesis run on small pools of their own (sized so decodes do not oversubscribe
the cores, and so a short sentence never queues behind a long decode); the LLM is the process's `ChatEngine`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

import numpy as np

from realtime.backends.base import Finished, ResponseRequest, ResponseStream
from realtime.hub import CascadeModels
from realtime.pipeline import CascadeResponse, PipelineOptions
from realtime.session import RealtimeSession, Speculate, Transcribe
from runtime.chat_api import ChatEngine, ChatMessage
from runtime.llm.turn_end import end_of_turn_probability

log = logging.getLogger(__name__)
MAX_SPECULATIVE = 2  # speculative decodes kept for reuse (older ones are forgotten)
# Sentence synthesis is short and on the critical path; ASR decodes take seconds. Sharing one small pool
# would queue a 0.1 s sentence behind other sessions' decodes, so realtime TTS has its own threads
# (unless the hub offers a `tts_executor`).
_TTS_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rt-tts")
_ASR_POOLS: dict[int, ThreadPoolExecutor] = {}

EngineSource = ChatEngine | Callable[[], Awaitable[ChatEngine | None]] | None


def asr_pool(threads_per_decode: int) -> ThreadPoolExecutor:
    """Realtime transcriptions run at most cores ÷ threads-per-decode at a time. Two 2-thread Whisper decodes
    on 2 cores both finish after ~2.3× the time of one; one after the other, the first is ready in 1×, the
    second in 2×: a lower mean turn latency, and the same throughput."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, cores // max(1, threads_per_decode))
    if workers not in _ASR_POOLS:
        _ASR_POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rt-asr")
    return _ASR_POOLS[workers]


class CascadeBackend:
    """One session's cascade work. `engine` is the chat engine, or an async loader of it (the first load can
    take a while: the session opens at once and its first response waits for the load)."""

    def __init__(self, session_id: str, models: CascadeModels, engine: EngineSource, options: PipelineOptions):
        self.id, self.models, self.options = session_id, models, options
        self._engine_loader = engine if callable(engine) and not isinstance(engine, ChatEngine) else None
        self._engine = None if self._engine_loader is not None else engine
        self._engine_future: asyncio.Future | None = None
        self.speculative: dict[tuple[int, int], asyncio.Future] = {}

    def start(self) -> None:
        if self._engine_loader is not None:
            self._engine_future = asyncio.ensure_future(self._engine_loader())
            self._engine_future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def close(self) -> None:
        for fut in self.speculative.values():
            fut.cancel()
        self.speculative.clear()
        if self._engine_future is not None and not self._engine_future.done():
            self._engine_future.cancel()

    async def engine(self) -> ChatEngine | None:
        """The chat engine, once loaded. Raises what the loader raised."""
        if self._engine_future is not None:
            return await asyncio.shield(self._engine_future)
        return self._engine

    # ---- turns ---------------------------------------------------------------------------------------
    def audio_appended(self, session: RealtimeSession) -> None:
        pass  # Whisper decodes whole turns

    def speculate(self, cmd: Speculate) -> None:
        # One speculative decode at a time: on 2 cores a wasted one (the speaker went on) costs as much as the
        # real one, so a pause inside speech while one runs does not start another.
        if any(not f.done() for f in self.speculative.values()):
            return
        self.speculative[cmd.key] = self._asr(cmd.audio, cmd.model, cmd.language, cmd.prompt)
        while len(self.speculative) > MAX_SPECULATIVE:
            self.speculative.pop(next(iter(self.speculative)))

    def speculative_transcript(self, key: tuple[int, int]) -> asyncio.Future[str] | None:
        return self.speculative.get(key)

    async def turn_end_probability(self, messages: tuple[ChatMessage, ...]) -> float | None:
        """The chat model's P(the user's turn is over) after `messages` (`runtime.llm.turn_end`); None where the
        engine cannot judge (or is not loaded yet)."""
        if self._engine_future is not None and not self._engine_future.done():
            return None  # the first turns of a session opened during the load: the audio decides
        engine = await self.engine()
        return await end_of_turn_probability(engine, messages) if engine is not None else None

    def transcribe(self, cmd: Transcribe, session: RealtimeSession) -> asyncio.Future[str]:
        fut = self.speculative.pop(cmd.key, None) if cmd.key is not None else None
        return fut if fut is not None else self._asr(cmd.audio, cmd.model, cmd.language, cmd.prompt)

    def _asr(self, audio: np.ndarray, model: str, language: str | None, prompt: str | None) -> asyncio.Future[str]:
        try:
            name: str | None = self.models.resolve_asr_name(model)
        except ValueError:
            log.info("[%s] transcription model %r unknown; using the default", self.id, model)
            name = None
        beam = self.models.asr_beam_size

        def run() -> str:
            return self.models.asr(name).transcribe_utterance(audio, language or "en", prompt, beam_size=beam)

        return asyncio.get_running_loop().run_in_executor(asr_pool(self.models.asr_threads), run)

    # ---- responses -----------------------------------------------------------------------------------
    async def respond(self, request: ResponseRequest) -> ResponseStream:
        try:
            engine = await self.engine()
        except Exception as exc:
            log.exception("[%s] the chat engine could not be loaded", self.id)
            engine, problem = None, f"the language model could not be loaded: {type(exc).__name__}: {exc}"
        else:
            problem = "no language model is configured on this server"
        if engine is None:
            yield Finished.failed("no_llm", problem)
            return
        options = request.options
        tts = self.models.tts() if options.audio_out else None
        run = CascadeResponse(engine, request.chat, tts, self.models.tts_executor or _TTS_POOL, self.options,
                              options.speed, name=f"rt:{self.id}")
        async with aclosing(run.outputs()) as outputs:
            async for output in outputs:
                yield output
