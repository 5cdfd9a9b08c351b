"""One response on the unified path, executed: prompt ids → audio LLM (MTP) → VocoderSession → audio deltas.

The answer is one slot of the stack's shared stepping loop (`runtime.slot_loop`); the session's decode
thread takes every step's ids into the response's `VocoderSession` (first chunk after one 120 ms group, then every four),
and each chunk of 16 kHz audio crosses to the event loop through an `_AudioChannel`. The loop side is
`realtime.backends.unified.UnifiedBackend.respond`, which yields each chunk as an `AudioChunk` to the runner's
shared playout (the cascade's output path).

Back-pressure: decoding stops `lead_ms + ahead_ms` of audio ahead of what has been sent, so a barge-in
never finds seconds of speech computed for nothing. Cancellation (barge-in, `response.cancel`, a closed
socket) cancels the task; its `finally` stops the channel, which the decode thread checks after every
step, and waits for that thread to leave — generation and vocoding end within one decode step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from realtime.unified_pipeline import UnifiedSession, UnifiedStack
from runtime.slot_loop import Generation
from runtime.sampling import SamplingParams
from vocoder.model import VocoderSession


@dataclass
class UnifiedTurnStats:
    """What one response cost (read by `voxline pipeline`, bench/pipeline.py and the tests)."""

    n_draft: int
    sample_rate: int  # of `audio_samples` (the vocoder's)
    prompt_tokens: int = 0
    audio_tokens: int = 0  # answer ids (whole groups; the end id is not counted)
    steps: int = 0  # verify steps after the prompt's forward
    step_tokens: int = 0  # ids those steps committed
    llm_s: float = 0.0  # prompt forward + decode steps
    vocoder_s: float = 0.0
    audio_samples: int = 0
    finish: str = ""  # stop | length | capacity | cancelled

    @property
    def tokens_per_step(self) -> float:
        return self.step_tokens / max(self.steps, 1)

    @property
    def audio_s(self) -> float:
        return self.audio_samples / self.sample_rate

    @property
    def compute_s(self) -> float:
        return self.llm_s + self.vocoder_s

    @property
    def rtf(self) -> float:
        """Decode + vocoder compute per second of audio produced."""
        return self.compute_s / self.audio_s if self.audio_samples else float("nan")


class _Stopped(Exception):
    """The response was cancelled: raised in the decode thread to leave `generate`."""


class _AudioChannel:
    """Decode thread → event loop: audio chunks in order, with back-pressure and a stop flag."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ahead_samples: int):
        self.loop, self.ahead = loop, ahead_samples
        self.queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._cond = threading.Condition()
        self.produced = self.consumed = 0
        self.stopped = False
        self.on_consumed: Callable[[], None] | None = None  # the decode loop re-checks who may run

    # decode thread
    def check(self) -> None:
        if self.stopped:
            raise _Stopped

    def put(self, pcm: np.ndarray) -> float:
        """Hand a chunk over once the listener is close enough; returns the seconds spent waiting."""
        t0 = time.perf_counter()
        with self._cond:
            while not self.stopped and self.produced - self.consumed > self.ahead:
                self._cond.wait()
            self.check()
            self.produced += len(pcm)
        self._to_loop(pcm)
        return time.perf_counter() - t0

    def close(self) -> None:
        self._to_loop(None)

    def _to_loop(self, item: np.ndarray | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (process shutting down)
            pass

    # event loop
    def sent(self, samples: int) -> None:
        with self._cond:
            self.consumed += samples
            self._cond.notify_all()
        if self.on_consumed is not None:
            self.on_consumed()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()


def _int16(audio) -> np.ndarray:
    return (np.clip(audio.numpy(), -1.0, 1.0) * 32767.0).astype(np.int16)


def decode_answer(unified: UnifiedSession, stack: UnifiedStack, prompt: list[int], max_new: int,
                  params: SamplingParams, seed: int, channel: _AudioChannel, generated: list[int],
                  stats: UnifiedTurnStats) -> None:
    """Decode thread: the answer is decoded in the stack's shared loop (one slot); this thread vocodes its ids as
    they come and hands the audio to `channel`."""
    end = stack.fmt.end
    arrivals: queue.SimpleQueue[list[int] | str] = queue.SimpleQueue()
    waited = voc_s = 0.0
    t0 = time.perf_counter()

    def may_run() -> bool:  # the loop's back-pressure: the listener is close and the vocoder keeps up
        if channel.stopped:  # cancelled while paused: end it, or this thread would wait for ids forever
            gen.cancel()
            return False
        return channel.produced - channel.consumed <= channel.ahead and arrivals.qsize() < 4

    gen = Generation(prompt, on_tokens=arrivals.put, on_finish=arrivals.put, params=params, max_new=max_new,
                     stop_ids=frozenset({end}), seed=seed, may_run=may_run)
    loop = stack.loop()
    channel.on_consumed = loop.wake
    try:
        voc = VocoderSession(stack.vocoder, seed=seed, schedule=stack.schedule, layout=stack.layout)

        def emit(pcm) -> None:
            nonlocal waited
            if pcm.numel():
                stats.audio_samples += pcm.numel()
                waited += channel.put(_int16(pcm))

        loop.submit(gen)
        try:
            while not isinstance(item := arrivals.get(), str):
                channel.check()
                loop.wake()  # the backlog shrank
                ids = [t for t in item if t != end]
                generated.extend(ids)
                stats.audio_tokens = len(generated)
                if ids:
                    t = time.perf_counter()
                    pcm = voc.push(ids)
                    voc_s += time.perf_counter() - t
                    emit(pcm)
            if item == "error":
                raise RuntimeError("the shared decode loop failed on this answer (see the log)")
            stats.finish = item
            if item != "cancelled":
                t = time.perf_counter()
                tail = voc.finish()
                voc_s += time.perf_counter() - t
                emit(tail)
        except _Stopped:
            stats.finish = "cancelled"
    finally:
        gen.cancel()
        loop.wake()
        stats.steps, stats.step_tokens = gen.steps, gen.step_tokens
        stats.vocoder_s = voc_s
        stats.llm_s = time.perf_counter() - t0 - waited - voc_s
        channel.close()
