"""The input audio buffer and server-VAD turn detection, on the session's 16 kHz timeline.

Sample indices count from the start of the session (`audio_start_ms` / `audio_end_ms` in the protocol are
these indices in ms). `InputBuffer` keeps the audio not yet committed, trimmed outside speech to what the
prefix padding can reach. `TurnDetector` runs Silero VAD (one `VADStream` per session over the shared
model) with `SpeechSegmenter`'s hysteresis and reports typed events:

- `SpeechStarted(start)` — speech began (start already pulled back by `prefix_padding_ms`);
- `SpeechPaused(start, end)` — `speculative_ms` of silence inside speech: a good moment to start
  transcribing (and answering) speculatively; if the silence lasts, the turn ends at the same `end`;
- `SpeechResumed(start, end)` — speech came back after the `SpeechPaused` that ended at `end`: the turn has
  grown, whatever was started on it at that pause is stale;
- `SpeechStopped(start, end)` — `silence_duration_ms` of silence: the turn is over.

`semantic_vad` (Smart Turn, `asr.smart_turn`): at each `SpeechPaused` the detector asks the turn model, on one
shared worker thread, whether the turn so far (its last 8 s, with the pause's silence) sounds complete. The answer
is read at a later `push` (the next 20 ms append, usually); if it clears the eagerness's threshold and the speaker
is still silent at the same `end`, `SpeechStopped(start, end)` comes now — the same span `SpeechPaused` announced,
so a speculative transcription of it is reused. Otherwise the silence rule ends the turn at the eagerness's
longest wait. A turn model is injected (`turn_model=`, or a `turn_model` attribute of the VAD object) or is the
installed Smart Turn; without one (package missing) semantic_vad keeps only its silence rule and says so once.

The words have a say too (`judge_text=True`, as every served session has): at each pause the session asks for the
chat model's P(end) of the turn's words so far (`Speculate.judge_end`; the runner answers with `text_verdict`, from
`runtime.llm.turn_end`, or None where the engine cannot judge). Smart Turn hears a finished-sounding phrase in
"Can you tell me … what bees make?"; the words are plainly unfinished. The surer the words are finished, the
shorter the silence that ends the turn (`Eagerness.text_tiers`); unfinished words wait for the longest silence
whatever the audio says; only the surest words let Smart Turn end the turn at the pause.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from asr.sample_buffer import SampleBuffer
from asr.smart_turn import WINDOW as TURN_MODEL_WINDOW
from asr.smart_turn import SmartTurn
from asr.vad import FRAME, SpeechSegmenter, VADConfig
from realtime.audio import INTERNAL_RATE
from realtime.config import TurnDetection

log = logging.getLogger(__name__)

SPECULATIVE_MS = 160  # silence after which a transcription (and a response) starts speculatively
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
class SpeechResumed:
    start: int
    end: int  # the end of the pause's `SpeechPaused`


@dataclass(frozen=True)
class SpeechStopped:
    start: int
    end: int


TurnEvent = SpeechStarted | SpeechPaused | SpeechResumed | SpeechStopped


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


_executor_lock = threading.Lock()
_shared_executor: ThreadPoolExecutor | None = None
_unavailable_logged = False


def turn_model_executor() -> ThreadPoolExecutor:
    """The one thread every session's turn-model decisions run on (in order; each is one core for ~10–80 ms)."""
    global _shared_executor
    with _executor_lock:
        if _shared_executor is None:
            _shared_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")
        return _shared_executor


def _completion_probability(model, audio: np.ndarray) -> float:
    """On the worker thread: the injected model, or the installed Smart Turn (loaded by the first call)."""
    return (model if model is not None else SmartTurn.shared()).probability(audio)


class TurnDetector:
    """Server VAD over the session timeline. `vad` is anything with `.stream()` → object with `.feed(audio)`
    returning one speech probability per 512-sample frame (Silero's VADStream, or a test double). For
    semantic_vad, `turn_model` has `.probability(audio_16k) -> float`; `executor` runs it (default: one shared
    worker thread, so the event loop never waits for the model). `speculative_ms`: the silence inside speech that
    makes a `SpeechPaused`."""

    def __init__(self, vad, config: TurnDetection, origin: int, turn_model=None, executor: Executor | None = None,
                 speculative_ms: int = SPECULATIVE_MS, judge_text: bool = False):
        self.config = config
        self.speculative_ms = speculative_ms
        self.origin = origin  # sample index where this detector's first frame starts
        self.stream = vad.stream()
        self.segmenter = SpeechSegmenter(VADConfig(threshold=config.threshold,
                                                   prefix_padding_ms=config.prefix_padding_ms,
                                                   silence_duration_ms=config.effective_silence_ms))
        self.speech_start: int | None = None
        self._speculated_end: int | None = None
        self._floor = origin  # a new turn never starts inside audio an earlier turn committed
        # semantic_vad: the turn model, the last seconds of audio it may hear, and the decision in flight
        self.threshold = config.completion_threshold
        self.last_probability: float | None = None  # the latest answer (benchmarks, logs)
        self._model = turn_model if turn_model is not None else getattr(vad, "turn_model", None)
        self._executor = executor
        self._history = SampleBuffer(TURN_MODEL_WINDOW + INTERNAL_RATE)
        self._history_end = origin  # sample index just past the newest audio held in _history
        self._decision: tuple[int, Future] | None = None  # (the pause's end, P(complete) being computed)
        # semantic_vad with the words judged too (`text_verdict`): the session asks for a verdict at each pause
        self.rule = config.eagerness_rule
        self.judges_text = judge_text and self.rule is not None
        self._text: tuple[int, float | None] | None = None  # (the pause's end, P(end) of its words; None: unknown)
        self._audio_complete: int | None = None  # the pause end Smart Turn called complete, awaiting the words
        if self.threshold is not None and self._model is None:
            self._pool().submit(SmartTurn.shared)  # load the model now, off the loop, not at the first pause

    @property
    def in_speech(self) -> bool:
        return self.speech_start is not None

    def _sample(self, seconds: float) -> int:
        return self.origin + int(round(seconds * INTERNAL_RATE))

    def _pool(self) -> Executor:
        return self._executor if self._executor is not None else turn_model_executor()

    def push(self, audio: np.ndarray) -> list[TurnEvent]:
        if self.threshold is not None:
            self._remember(audio)
        events: list[TurnEvent] = []
        for e in self.segmenter.push(self.stream.feed(audio)):
            if e.kind == "start":
                self.speech_start = max(self.origin, self._floor, self._sample(e.time))
                self._speculated_end = None
                self._decision = None
                self._text = self._audio_complete = None
                events.append(SpeechStarted(self.speech_start))
            elif self.speech_start is not None:
                events.append(SpeechStopped(self.speech_start, self._sample(e.time)))
                self.speech_start = None
                self._speculated_end = None
                self._decision = None
                self._text = self._audio_complete = None
        seg = self.segmenter
        if self.speech_start is not None and self._speculated_end is not None \
                and self._speech_end() != self._speculated_end:
            events.append(SpeechResumed(self.speech_start, self._speculated_end))
            self._speculated_end = None
        if self.speech_start is not None and seg.silence_frames * FRAME * 1000 / INTERNAL_RATE >= self.speculative_ms:
            end = self._speech_end()
            if end != self._speculated_end:
                self._speculated_end = end
                events.append(SpeechPaused(self.speech_start, end))
                if self.threshold is not None:
                    self._ask(self.speech_start, end)
        if self._decision is not None and self._decision[1].done():
            events += self._decided()
        if self.judges_text and self.speech_start is not None:
            events += self._judged()
        return events

    def text_verdict(self, end: int, p_end: float | None) -> None:
        """The chat model's P(end) for the words of the turn up to the pause that ended at `end` (None: it could
        not judge them). Acted on at the next `push`, if the speaker is still silent after that pause."""
        if self.judges_text and self.speech_start is not None and end == self._speculated_end:
            self._text = (end, p_end)

    def settle(self, timeout: float | None = None) -> None:
        """Wait until the decision in flight (if any) has its answer; the next `push` acts on it. For tests and
        offline runs that feed audio faster than real time."""
        if self._decision is not None:
            try:
                self._decision[1].result(timeout)
            except Exception:  # reported by `_decided`
                pass

    def _speech_end(self) -> int:
        seg = self.segmenter
        return self.origin + (seg.frames_seen - seg.silence_frames) * FRAME

    def _remember(self, audio: np.ndarray) -> None:
        self._history.append(audio)
        self._history_end += len(audio)
        excess = len(self._history) - TURN_MODEL_WINDOW
        if excess > INTERNAL_RATE:  # trim in 1 s steps, not on every append
            self._history.drop(excess)

    def _ask(self, start: int, end: int) -> None:
        """P(complete) of the turn so far: from its start (at most the model's 8 s) to now, pause included."""
        held_from = self._history_end - len(self._history)
        audio = self._history.view(max(start, held_from) - held_from).copy()
        self._decision = (end, self._pool().submit(_completion_probability, self._model, audio))

    def _decided(self) -> list[TurnEvent]:
        global _unavailable_logged
        assert self._decision is not None and self.threshold is not None
        end, future = self._decision
        self._decision = None
        try:
            self.last_probability = p = future.result()
        except Exception as exc:
            if not _unavailable_logged:
                _unavailable_logged = True
                log.warning("semantic_vad has no turn model (%s): turns end on silence alone", exc)
            return []
        # Only while the speaker is still silent after the same word: speech since the pause moves the end on.
        if self.speech_start is None or p < self.threshold or not self._silent_since(end):
            return []
        if self.judges_text:
            self._audio_complete = end  # the words have their say too (`_judged`)
            return []
        return self._stop(end)

    def _judged(self) -> list[TurnEvent]:
        """semantic_vad with the words judged: the surer the words are finished, the shorter the silence that ends
        the turn (`Eagerness.text_tiers`); only the surest let Smart Turn's "complete" end it at once. Words the
        engine could not judge leave the decision to the audio alone."""
        assert self.rule is not None
        if self._text is None or not self._silent_since(self._text[0]):
            return []
        end, p_end = self._text
        if p_end is None:
            return self._stop(end) if self._audio_complete == end else []
        silence_ms, audio_may_end = self.rule.text_silence_ms(p_end)
        if (audio_may_end and self._audio_complete == end) or \
                self.segmenter.silence_frames * FRAME * 1000 / INTERNAL_RATE >= silence_ms:
            return self._stop(end)
        return []

    def _silent_since(self, end: int) -> bool:
        return self._speech_end() == end and self.segmenter.silence_frames > 0

    def _stop(self, end: int) -> list[TurnEvent]:
        assert self.speech_start is not None
        stopped = SpeechStopped(self.speech_start, end)
        self._end_turn_early(end)
        return [stopped]

    def _end_turn_early(self, end: int) -> None:
        """The turn ended before the silence rule did: the segmenter starts over (so the next word opens a new
        turn), on the same clock, and the next turn's prefix padding cannot reach back into this one's tail."""
        fresh = SpeechSegmenter(self.segmenter.config)
        fresh.frames_seen = self.segmenter.frames_seen
        self.segmenter = fresh
        self.speech_start = None
        self._speculated_end = None
        self._text = self._audio_complete = None
        self._floor = end + TAIL_MS * INTERNAL_RATE // 1000

    def keep_from(self) -> int:
        """The earliest sample the buffer must keep: the speech start, or what prefix padding can reach."""
        if self.speech_start is not None:
            return self.speech_start
        now = self.origin + self.segmenter.frames_seen * FRAME
        return now - int((self.config.prefix_padding_ms + 200) * INTERNAL_RATE / 1000)
