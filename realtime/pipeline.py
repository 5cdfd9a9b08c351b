"""One cascade response, executed: LLM text → sentences → TTS → typed outputs.

The LLM stream (`ChatEngine.stream`) and speech synthesis run concurrently: each complete sentence (the
first may be a shorter clause) goes to Piper while the model keeps writing, so audio starts long before
the text is complete. The response yields `TextDelta`s as the model writes and an `AudioChunk` per
synthesised sentence; the runner paces the audio to the listener (`realtime.playout`), and this generator
waits at each chunk until it has been played. Synthesis runs at most `SYNTHESIS_AHEAD` sentences ahead of
what is playing, so a barge-in wastes no more than that.

Cancellation closes the generator: the LLM stream is closed in `finally` (the engine stops within one
decode step) and no further sentence is synthesised. Nothing here touches the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from realtime.backends.base import AudioChunk, Finished, ResponseOutput, TextDelta
from realtime.hub import Synthesizer
from runtime.chat_api import ChatEngine, ChatRequest, ToolCall
from tts.text import SentenceChunker

log = logging.getLogger(__name__)
SYNTHESIS_AHEAD = 1  # sentences synthesised and waiting beyond the one being sent (plus one in synthesis)


@dataclass(frozen=True)
class PipelineOptions:
    delta_ms: int = 100  # audio per output_audio.delta
    lead_ms: int = 400  # how far ahead of real-time playback audio is sent
    first_clause_chars: int = 24  # the first TTS chunk may end at a comma this early (later ones: 60)
    # If the first sentence is not complete this long after the first token (a slow model), speak the
    # complete words so far (at least `first_chunk_min_words`) rather than keep the user waiting.
    # A split sentence is harder to understand (Piper said a lone "Paris." so that Whisper heard "Harris"), so
    # this only cuts in for genuinely slow text and never for a short sentence.
    first_chunk_wait_ms: int = 1000
    first_chunk_min_words: int = 6
    transcript_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 20 <= self.delta_ms <= 1000 or not 0 <= self.lead_ms <= 10000:
            raise ValueError("delta_ms must be in [20, 1000] and lead_ms in [0, 10000]")


class _TextDone:
    """The LLM stream ended: its tool calls and finish, which go out after the last audio."""

    def __init__(self, finish: str | None, usage: tuple[int, int], calls: list[ToolCall]):
        self.finish, self.usage, self.calls = finish, usage, calls


_AUDIO_DONE = object()


class CascadeResponse:
    """One response of the cascade: `outputs()` is the stream the runner consumes."""

    def __init__(self, engine: ChatEngine, request: ChatRequest, tts: Synthesizer | None, executor: Executor | None,
                 options: PipelineOptions, speed: float = 1.0, name: str = "rt"):
        self.engine, self.request, self.tts, self.executor = engine, request, tts, executor
        self.options, self.speed, self.name = options, speed, name
        # What the LLM and synthesis tasks produce, in the order it goes out.
        self._out: asyncio.Queue = asyncio.Queue()
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()
        # Sentences in synthesis, waiting or playing: synthesis starts one only when a slot is free.
        self._slots = asyncio.Semaphore(SYNTHESIS_AHEAD + 2)

    async def outputs(self) -> AsyncIterator[ResponseOutput]:
        tasks = [asyncio.create_task(self._write(), name=f"{self.name}:llm")]
        if self.tts is not None:
            tasks.append(asyncio.create_task(self._synthesize(), name=f"{self.name}:tts"))
        pending, text_done = len(tasks), None
        try:
            while pending:
                item = await self._out.get()
                if isinstance(item, Exception):
                    raise item  # the LLM or synthesis failed: the runner fails the response
                if isinstance(item, _TextDone):
                    text_done, pending = item, pending - 1
                elif item is _AUDIO_DONE:
                    pending -= 1
                else:
                    yield item
                    if isinstance(item, AudioChunk):
                        self._slots.release()  # played: synthesis may start another sentence
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert text_done is not None
        for call in text_done.calls:
            yield call
        if text_done.finish == "length":
            yield Finished("incomplete", reason="max_output_tokens", usage=text_done.usage)
        else:
            yield Finished("completed", usage=text_done.usage)

    # ---- the LLM -------------------------------------------------------------------------------------
    async def _write(self) -> None:
        """LLM stream → text outputs now, sentences to synthesis; then `_TextDone` (or the exception)."""
        try:
            self._out.put_nowait(await self._generate())
        except Exception as exc:
            self._out.put_nowait(exc)

    async def _generate(self) -> _TextDone:
        speaking = self.tts is not None
        chunker = SentenceChunker(min_clause_chars=self.options.first_clause_chars)
        loop = asyncio.get_running_loop()
        first_text_at: float | None = None
        spoken = False  # has a first chunk gone to TTS
        finish, usage, calls = None, (0, 0), []
        stream = self.engine.stream(self.request)
        try:
            async for delta in stream:
                if delta.text:
                    self._out.put_nowait(TextDelta(delta.text))
                    if speaking:
                        first_text_at = first_text_at or loop.time()
                        ready = chunker.push(delta.text)
                        if not ready and not spoken and \
                                loop.time() - first_text_at >= self.options.first_chunk_wait_ms / 1000:
                            ready = self._early_words(chunker, delta.text[-1].isspace())
                        for sentence in ready:
                            self._sentences.put_nowait(sentence)
                            chunker.min_clause_chars = 60
                            spoken = True
                if delta.tool_call is not None:
                    calls.append(delta.tool_call)
                if delta.finish_reason is not None:
                    finish, usage = delta.finish_reason, (delta.prompt_tokens, delta.completion_tokens)
        finally:
            aclose = getattr(stream, "aclose", None)  # ChatEngine.stream is any async iterator
            if aclose is not None:
                await aclose()
            if speaking:
                for sentence in chunker.flush():
                    self._sentences.put_nowait(sentence)
                self._sentences.put_nowait(None)
        return _TextDone(finish, usage, calls)

    def _early_words(self, chunker: SentenceChunker, last_word_complete: bool) -> list[str]:
        """The complete words buffered so far; a last word still growing stays in the chunker."""
        rest = " ".join(chunker.flush())
        head, tail = (rest, "") if last_word_complete else rest.rpartition(" ")[::2]
        if len(head.split()) < self.options.first_chunk_min_words:
            chunker.push(rest + (" " if last_word_complete else ""))
            return []
        chunker.push(tail)
        return [head]

    # ---- speech --------------------------------------------------------------------------------------
    async def _synthesize(self) -> None:
        """Sentences → an `AudioChunk` each, in order, while the LLM keeps writing; then the end marker."""
        assert self.tts is not None
        loop = asyncio.get_running_loop()
        try:
            while (sentence := await self._sentences.get()) is not None:
                await self._slots.acquire()
                pcm = await loop.run_in_executor(self.executor, self._speak, sentence)
                self._out.put_nowait(AudioChunk(pcm, self.tts.sample_rate, transcript=sentence))
        except Exception as exc:
            self._out.put_nowait(exc)
            return
        self._out.put_nowait(_AUDIO_DONE)

    def _speak(self, text: str) -> np.ndarray:
        from tts.piper_tts import SpeechOptions

        assert self.tts is not None
        return self.tts.synthesize_all(text, SpeechOptions(speed=self.speed))
