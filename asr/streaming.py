"""Streaming transcription of one audio stream: VAD segments, throttled partials, one final per segment.

The caller feeds 16 kHz float32 audio as it arrives and receives typed events through an async callback:
`speech_started` → `partial`* → `final` (→ `speech_stopped` just before the final). All model work runs
in a thread pool; the event loop only does VAD bookkeeping. One decode per stream is in flight at a time,
so partials never pile up behind each other: a partial is skipped while another decode runs.

A final is decoded in a 20.4 s window (`WhisperASR.transcribe_utterance`, ~0.35 s on 2 CPU cores for a short
utterance). To meet "final within 1 s of the end of speech" that decode starts speculatively once
`speculative_final_ms` of silence has passed; if the silence lasts to `silence_duration_ms` its result is the
final, and if speech resumes it is discarded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from asr.sample_buffer import SampleBuffer
from asr.vad import FRAME_SECONDS, SAMPLE_RATE, SileroVAD, SpeechSegmenter, VADConfig
from asr.whisper_asr import WhisperASR

log = logging.getLogger(__name__)
Emit = Callable[[dict], Awaitable[None]]


@dataclass(frozen=True)
class StreamingConfig:
    vad: VADConfig = VADConfig(silence_duration_ms=400)
    language: str | None = "en"
    partials: bool = True
    partial_interval_s: float = 0.5
    speculative_final_ms: int = 160
    max_segment_s: float = 28.0  # stay inside one Whisper window

    def __post_init__(self) -> None:
        if not 0.1 <= self.partial_interval_s <= 10:
            raise ValueError("partial_interval_s must be between 0.1 and 10")
        if not 1 <= self.max_segment_s <= 30:
            raise ValueError("max_segment_s must be between 1 and 30")


class StreamingTranscriber:
    """Per-stream state. Not thread-safe: call `feed`/`flush`/`close` from one task."""

    def __init__(self, asr: WhisperASR, vad: SileroVAD, config: StreamingConfig, executor: Executor | None,
                 emit: Emit):
        self.asr, self.config, self.executor, self.emit = asr, config, executor, emit
        self.vad = vad.stream()
        self.segmenter = SpeechSegmenter(config.vad)
        # Samples from self._audio_t0 up to now (a 20 ms frame costs a 20 ms copy, not the whole segment).
        self._audio = SampleBuffer(SAMPLE_RATE)
        self._audio_t0 = 0.0
        self._seg_start: float | None = None
        self._segment_id = 0
        self._last_partial_at = 0.0
        self._busy = False  # a partial decode is running
        self._speculative: tuple[float, asyncio.Future] | None = None  # (segment end time, decode)
        self._finals: asyncio.Task | None = None  # chain of final decodes, in order
        self._tasks: set[asyncio.Task] = set()
        self.finals_emitted = 0

    # ---- audio in ----------------------------------------------------------------------------------
    async def feed(self, audio: np.ndarray) -> None:
        audio = np.asarray(audio, np.float32)
        self._append(audio)
        for event in self.segmenter.push(self.vad.feed(audio)):
            if event.kind == "start":
                self._seg_start = max(event.time, self._audio_t0)
                self._last_partial_at = time.monotonic()
                self._speculative = None
                await self.emit({"type": "speech_started", "start": round(self._seg_start, 3)})
            else:
                await self._end_segment(event.time)
        if self._seg_start is not None:
            now = self.segmenter.now
            if now - self._seg_start >= self.config.max_segment_s:
                await self._end_segment(now)
                self._seg_start = now
            else:
                self._maybe_speculate()
                self._maybe_partial()
        else:
            self._trim()

    async def flush(self) -> None:
        """Close the current segment now (client said the utterance is over) and wait for all finals."""
        if self._seg_start is not None:
            self.segmenter.in_speech = False
            await self._end_segment(self.segmenter.now)
        if self._finals is not None:
            await self._finals

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._finals is not None:
            self._finals.cancel()
        await asyncio.gather(*self._tasks, *( [self._finals] if self._finals else []), return_exceptions=True)

    # ---- internals ---------------------------------------------------------------------------------
    def _append(self, audio: np.ndarray) -> None:
        self._audio.append(audio)

    def _slice(self, start: float, end: float) -> np.ndarray:
        """A copy: decodes run in other threads while this buffer keeps changing."""
        a = int(round((start - self._audio_t0) * SAMPLE_RATE))
        b = int(round((end - self._audio_t0) * SAMPLE_RATE))
        return self._audio.view(a, b).copy()

    def _trim(self) -> None:
        """Outside speech keep only what prefix padding may reach back to."""
        keep = int((self.config.vad.prefix_padding_ms / 1000 + 4 * FRAME_SECONDS) * SAMPLE_RATE)
        if len(self._audio) > 2 * keep:
            drop = len(self._audio) - keep
            self._audio.drop(drop)
            self._audio_t0 += drop / SAMPLE_RATE

    def _run(self, fn, *args) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _maybe_speculate(self) -> None:
        silence_s = self.segmenter.silence_frames * FRAME_SECONDS
        if silence_s * 1000 < self.config.speculative_final_ms:
            if self._speculative is not None and self.segmenter.silence_frames == 0:
                self._speculative = None  # speech resumed: that decode's result is stale
            return
        end = self.segmenter.now - silence_s
        if self._speculative is None or abs(self._speculative[0] - end) > 1e-6:
            audio = self._slice(self._seg_start, end)
            self._speculative = (end, self._run(self._decode_final, audio))

    def _maybe_partial(self) -> None:
        # A partial never delays a final: none starts once the speaker has gone quiet.
        if not self.config.partials or self._busy or self.segmenter.silence_frames > 0:
            return
        now = time.monotonic()
        if now - self._last_partial_at < self.config.partial_interval_s:
            return
        if self.segmenter.now - self._seg_start < 0.3:
            return
        self._busy = True
        self._last_partial_at = now
        seg_id, start, end = self._segment_id, self._seg_start, self.segmenter.now
        audio = self._slice(start, end)
        self._spawn(self._partial(seg_id, start, end, audio))

    async def _partial(self, seg_id: int, start: float, end: float, audio: np.ndarray) -> None:
        try:
            text = await self._run(self.asr.transcribe_partial, audio, self.config.language)
            # Drop it if its segment was finalised meanwhile: a partial must never follow its final.
            if text and seg_id == self._segment_id:
                await self.emit({"type": "partial", "segment_id": seg_id, "text": text,
                                 "start": round(start, 3), "end": round(end, 3)})
        except Exception:  # a failed partial is not fatal; the final will still come
            log.exception("partial decode failed")
        finally:
            self._busy = False

    def _decode_final(self, audio: np.ndarray) -> str:
        return self.asr.transcribe_utterance(audio, self.config.language)

    async def _end_segment(self, end: float) -> None:
        start = self._seg_start
        if start is None:
            return
        self._seg_start = None
        seg_id = self._segment_id
        self._segment_id += 1
        spec = self._speculative
        self._speculative = None
        if spec is not None and abs(spec[0] - end) < 1e-6:
            decode = spec[1]
        else:
            decode = self._run(self._decode_final, self._slice(start, end))
        await self.emit({"type": "speech_stopped", "segment_id": seg_id, "end": round(end, 3)})
        previous = self._finals

        async def finish() -> None:
            if previous is not None:
                await asyncio.shield(previous)  # finals go out in segment order
            try:
                text = await decode
            except Exception as exc:
                log.exception("final decode failed")
                await self.emit({"type": "error", "code": "asr_failed", "message": str(exc), "segment_id": seg_id})
                return
            self.finals_emitted += 1
            await self.emit({"type": "final", "segment_id": seg_id, "text": text,
                             "start": round(start, 3), "end": round(end, 3)})

        self._finals = asyncio.create_task(finish())
