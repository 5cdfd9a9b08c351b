"""The input audio buffer and server-VAD turn detection, on the session's 16 kHz timeline.

Sample indices count from the start of the session (`audio_start_ms` / `audio_end_ms` in the protocol are
these indices in ms). `InputBuffer` keeps the audio not yet committed, trimmed outside speech to what the
prefix padding can reach. `TurnDetector` runs Silero VAD (one `VADStream` per session over the shared
model) with `SpeechSegmenter`'s hysteresis and reports typed events:

- `SpeechStarted(start)` — speech began (start already pulled back by `prefix_padding_ms`);
- `SpeechPaused(start, end)` — `speculative_ms` of silence inside speech: a good moment to start
  transcribing speculatively; if the silence lasts, the turn ends at the same `end`;
- `SpeechStopped(start, end)` — `silence_duration_ms` of silence: the turn is over.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from asr.sample_buffer import SampleBuffer
from asr.vad import FRAME, SpeechSegmenter, VADConfig
from realtime.audio import INTERNAL_RATE
from realtime.config import TurnDetection

SPECULATIVE_MS = 160  # silence after which a transcription starts speculatively
TAIL_MS = 150  # audio kept after the end of speech in a committed turn (soft word endings)
VAD_FRAME_MS = FRAME * 1000 // INTERNAL_RATE  # 32: one Silero frame, the VAD's time resolution


def ms(samples: int) -> int:
    return int(round(samples * 1000 / INTERNAL_RATE))


@dataclass(frozen=True)
class SpeechStarted:
    start: int  # sample index


@dataclass(frozen=True)
class SpeechPaused:
    start: int
    end: int


@dataclass(frozen=True)
class SpeechStopped:
    start: int
    end: int


TurnEvent = SpeechStarted | SpeechPaused | SpeechStopped


class InputBuffer:
    """Uncommitted input audio (float32, 16 kHz) plus when each piece arrived (for turn latency)."""

    def __init__(self, max_seconds: float = 600.0):
        self.max_samples = int(max_seconds * INTERNAL_RATE)
        self._audio = SampleBuffer(INTERNAL_RATE)  # a 20 ms append copies 20 ms, not the whole buffer
        self.t0 = 0  # sample index of the oldest sample held
        self.total = 0  # samples received since the session started
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)  # (end sample of an append, time)

    def __len__(self) -> int:
        return len(self._audio)

    @property
    def seconds(self) -> float:
        return len(self._audio) / INTERNAL_RATE

    def append(self, audio: np.ndarray, now: float) -> None:
        self._audio.append(audio)
        self.total += len(audio)
        self._arrivals.append((self.total, now))

    def full(self, extra: int = 0) -> bool:
        return len(self._audio) + extra > self.max_samples

    def slice(self, start: int, end: int) -> np.ndarray:
        """A copy of samples [start, end) of the session timeline (what is still held of them)."""
        return self._audio.view(start - self.t0, min(end, self.total) - self.t0).copy()

    def drop_before(self, sample: int) -> None:
        if sample > self.t0:
            cut = min(sample - self.t0, len(self._audio))
            self._audio.drop(cut)
            self.t0 += cut

    def clear(self) -> None:
        self.drop_before(self.total)

    def arrival_time(self, sample: int) -> float | None:
        """When the append holding `sample` arrived (the first append whose end reaches it)."""
        for end, t in self._arrivals:
            if end >= sample:
                return t
        return None


class TurnDetector:
    """Server VAD over the session timeline. `vad` is anything with `.stream()` → object with `.feed(audio)`
    returning one speech probability per 512-sample frame (Silero's VADStream, or a test double)."""

    def __init__(self, vad, config: TurnDetection, origin: int):
        self.config = config
        self.origin = origin  # sample index where this detector's first frame starts
        self.stream = vad.stream()
        self.segmenter = SpeechSegmenter(VADConfig(threshold=config.threshold,
                                                   prefix_padding_ms=config.prefix_padding_ms,
                                                   silence_duration_ms=config.effective_silence_ms))
        self.speech_start: int | None = None
        self._speculated_end: int | None = None

    @property
    def in_speech(self) -> bool:
        return self.speech_start is not None

    def _sample(self, seconds: float) -> int:
        return self.origin + int(round(seconds * INTERNAL_RATE))

    def push(self, audio: np.ndarray) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        for e in self.segmenter.push(self.stream.feed(audio)):
            if e.kind == "start":
                self.speech_start = max(self.origin, self._sample(e.time))
                self._speculated_end = None
                events.append(SpeechStarted(self.speech_start))
            elif self.speech_start is not None:
                events.append(SpeechStopped(self.speech_start, self._sample(e.time)))
                self.speech_start = None
        seg = self.segmenter
        if self.speech_start is not None and seg.silence_frames * FRAME * 1000 / INTERNAL_RATE >= SPECULATIVE_MS:
            end = self.origin + (seg.frames_seen - seg.silence_frames) * FRAME
            if end != self._speculated_end:
                self._speculated_end = end
                events.append(SpeechPaused(self.speech_start, end))
        return events

    def keep_from(self) -> int:
        """The earliest sample the buffer must keep: the speech start, or what prefix padding can reach."""
        if self.speech_start is not None:
            return self.speech_start
        now = self.origin + self.segmenter.frames_seen * FRAME
        return now - int((self.config.prefix_padding_ms + 200) * INTERNAL_RATE / 1000)
