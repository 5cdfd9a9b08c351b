"""One response, executed: LLM text → sentences → TTS → paced audio deltas.

The LLM stream (`ChatEngine.stream`) and speech synthesis run concurrently: each complete sentence (the
first may be a shorter clause) goes to Piper while the model keeps writing, so audio starts long before
the text is complete. Audio leaves at playback speed plus a small lead (`lead_ms`): a client never holds
more than that much unplayed audio, so a barge-in really stops the voice, and the response stays
`in_progress` for as long as it is being heard.

Cancellation is task cancellation: the LLM stream is closed in `finally` (the engine stops within one
decode step), no further sentence is synthesised, and the session — which decided the cancel — has
already sent `response.done`. Nothing here sends events directly: every output goes through the session,
which turns it into commands for the runner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from realtime.audio import OutputEncoder
from realtime.session import Command, RealtimeSession
from runtime.chat_api import ChatEngine, ToolCall
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


class PlaybackPacer:
    """Releases a response's audio `lead_ms` before it plays at the listener. If the listener ran dry
    (audio due to be playing already), playback restarts from now."""

    def __init__(self, lead_ms: float):
        self.lead_ms = lead_ms
        self._clock: float | None = None  # loop time at which audio position 0 ms plays

    async def wait(self, start_ms: float) -> None:
        """Return when audio starting at `start_ms` is due to be sent."""
        now = asyncio.get_running_loop().time()
        if self._clock is None or now > self._clock + start_ms / 1000:
            self._clock = now - start_ms / 1000
        wait = self._clock + (start_ms - self.lead_ms) / 1000 - now
        if wait > 0:
            await asyncio.sleep(wait)


class ResponseRun:
    """Runs response `response_id` of `session`. `execute` carries the session's commands out;
    `wait_transcripts` resolves once the listed user items are transcribed; `room` waits for the socket."""

    def __init__(self, response_id: str, wait_for: tuple[str, ...], session: RealtimeSession,
                 engine: Callable[[], Awaitable[ChatEngine | None]], tts, executor: Executor | None,
                 execute: Callable[[list[Command]], None],
                 wait_transcripts: Callable[[tuple[str, ...]], Awaitable[None]],
                 room: Callable[[], Awaitable[None]], options: PipelineOptions | None = None):
        self.id, self.wait_for, self.session = response_id, wait_for, session
        self.engine, self.tts, self.executor = engine, tts, executor
        self.execute, self.wait_transcripts, self.room = execute, wait_transcripts, room
        self.options = options or PipelineOptions()
        self._pacer = PlaybackPacer(self.options.lead_ms)

    async def run(self) -> None:
        try:
            await self.wait_transcripts(self.wait_for)
            try:
                engine = await self.engine()
            except Exception as exc:
                log.exception("[%s] the chat engine could not be loaded", self.session.id)
                engine, problem = None, f"the language model could not be loaded: {type(exc).__name__}: {exc}"
            else:
                problem = "no language model is configured on this server"
            request = self.session.chat_request(self.id)
            if request is None:
                return  # cancelled while waiting
            if engine is None:
                self.execute(self.session.response_finish(self.id, "failed", error={
                    "type": "server_error", "code": "no_llm", "message": problem}))
                return
            finish, usage, calls = await self._generate(engine, request)
            for call in calls:
                self.execute(self.session.response_tool_call(self.id, call))
            if finish == "length":
                self.execute(self.session.response_finish(self.id, "incomplete", reason="max_output_tokens",
                                                          usage=usage))
            else:
                self.execute(self.session.response_finish(self.id, "completed", usage=usage))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("[%s] response %s failed", self.session.id, self.id)
            self.execute(self.session.response_finish(self.id, "failed", error={
                "type": "server_error", "code": "response_failed", "message": f"{type(exc).__name__}: {exc}"}))

    async def _generate(self, engine: ChatEngine, request) -> tuple[str | None, tuple[int, int], list[ToolCall]]:
        st = self.session.live(self.id)
        assert st is not None
        speaker: asyncio.Task | None = None
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        if st.options.audio_out:
            speaker = asyncio.create_task(self._speak(sentences, st.options), name=f"rt:{self.session.id}:tts")
        chunker = SentenceChunker(min_clause_chars=self.options.first_clause_chars)
        loop = asyncio.get_running_loop()
        first_text_at: float | None = None
        spoken = False  # has a first chunk gone to TTS
        finish, usage, calls = None, (0, 0), []
        stream = engine.stream(request)
        try:
            try:
                async for delta in stream:
                    if delta.text:
                        self.execute(self.session.response_text(self.id, delta.text))
                        if speaker is not None:
                            first_text_at = first_text_at or loop.time()
                            ready = chunker.push(delta.text)
                            if not ready and not spoken and \
                                    loop.time() - first_text_at >= self.options.first_chunk_wait_ms / 1000:
                                ready = self._early_words(chunker, delta.text[-1].isspace())
                            for sentence in ready:
                                sentences.put_nowait(sentence)
                                chunker.min_clause_chars = 60
                                spoken = True
                    if delta.tool_call is not None:
                        calls.append(delta.tool_call)
                    if delta.finish_reason is not None:
                        finish, usage = delta.finish_reason, (delta.prompt_tokens, delta.completion_tokens)
                    if speaker is not None and speaker.done():
                        break  # synthesis failed: stop generating, report below
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            if speaker is not None:
                for sentence in chunker.flush():
                    sentences.put_nowait(sentence)
                sentences.put_nowait(None)
                await speaker
        finally:
            if speaker is not None and not speaker.done():
                speaker.cancel()
                await asyncio.gather(speaker, return_exceptions=True)
        return finish, usage, calls

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
    def _synthesize(self, text: str, speed: float) -> np.ndarray:
        from tts.piper_tts import SpeechOptions

        return self.tts.synthesize_all(text, SpeechOptions(speed=speed))

    async def _speak(self, sentences: asyncio.Queue, options) -> None:
        fmt = options.output_format
        encoder = OutputEncoder(fmt, self.tts.sample_rate)
        bytes_per_ms = fmt.rate * fmt.bytes_per_sample / 1000
        chunk = int(bytes_per_ms * self.options.delta_ms) // fmt.bytes_per_sample * fmt.bytes_per_sample
        # Synthesis runs ahead of pacing: the next sentence is synthesised while this one plays. Were it
        # started only once this one was sent, the listener would hold just `lead_ms` of audio while Piper
        # works, and any sentence taking longer than that (shared cores, a long sentence) leaves the player
        # dry. At most SYNTHESIS_AHEAD sentences wait; a barge-in wastes no more than that.
        speech: asyncio.Queue = asyncio.Queue(maxsize=SYNTHESIS_AHEAD)
        synthesis = asyncio.create_task(self._synthesize_ahead(sentences, speech, options.speed),
                                        name=f"rt:{self.session.id}:synthesis")
        position = 0.0
        try:
            while (item := await speech.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                sentence, pcm = item
                data = encoder(pcm)
                duration = len(data) / bytes_per_ms
                self.session.response_sentence(self.id, sentence, position, position + duration)
                for offset in range(0, len(data), chunk):
                    piece = data[offset:offset + chunk]
                    await self._pacer.wait(position)
                    await self.room()
                    self.execute(self.session.response_audio(self.id, piece, position, len(piece) / bytes_per_ms))
                    position += len(piece) / bytes_per_ms
        finally:
            synthesis.cancel()
            await asyncio.gather(synthesis, return_exceptions=True)
        tail = encoder(np.zeros(0, np.int16), last=True)
        if tail:
            self.execute(self.session.response_audio(self.id, tail, position, len(tail) / bytes_per_ms))

    async def _synthesize_ahead(self, sentences: asyncio.Queue, speech: asyncio.Queue, speed: float) -> None:
        """Sentences → (sentence, PCM) in order; then None, or the exception that stopped synthesis."""
        loop = asyncio.get_running_loop()
        try:
            while (sentence := await sentences.get()) is not None:
                pcm = await loop.run_in_executor(self.executor, self._synthesize, sentence, speed)
                await speech.put((sentence, pcm))
        except Exception as exc:  # raised again by _speak, which fails the response
            await speech.put(exc)
            return
        await speech.put(None)
