"""Voice activity detection: Silero VAD (ONNX, from the `silero-vad` wheel) run with onnxruntime.

`SileroVAD` holds the one shared ONNX session (thread-safe, loaded once per process). Each audio stream
owns a `VADStream` — the recurrent state, the 64-sample context and leftover samples — so any number of
sessions share the model. `SpeechSegmenter` turns per-frame probabilities into speech start/end events
with hysteresis, the way OpenAI's `server_vad` parameters describe (threshold, prefix padding, silence
duration).
"""

from __future__ import annotations

import importlib.resources
import threading
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000
FRAME = 512  # samples per VAD step at 16 kHz (32 ms): what the Silero model was trained on
_CONTEXT = 64  # samples of the previous frame the v5+ model expects in front of each frame
FRAME_SECONDS = FRAME / SAMPLE_RATE


class SileroVAD:
    """The shared Silero model. Call `stream()` for per-session state."""

    _lock = threading.Lock()
    _instance: "SileroVAD | None" = None

    def __init__(self, model_path: str | None = None):
        import onnxruntime

        path = model_path or str(importlib.resources.files("silero_vad") / "data" / "silero_vad.onnx")
        opts = onnxruntime.SessionOptions()
        # One frame is tiny; more threads only add synchronisation cost.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])

    @classmethod
    def shared(cls) -> "SileroVAD":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def stream(self) -> "VADStream":
        return VADStream(self)

    def run(self, frames: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step for a batch of frames. frames: [B, 64+512] float32, state: [2, B, 128]."""
        out, new_state = self.session.run(
            None, {"input": frames, "state": state, "sr": np.array(SAMPLE_RATE, dtype=np.int64)}
        )
        return out[:, 0], new_state


@dataclass
class VADStream:
    """Per-stream Silero state. `feed()` returns one speech probability per complete 32 ms frame."""

    model: SileroVAD
    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(_CONTEXT, np.float32))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def reset(self) -> None:
        self.state[:] = 0
        self.context[:] = 0
        self.pending = np.zeros(0, np.float32)

    def feed(self, audio: np.ndarray) -> np.ndarray:
        """audio: float32 mono 16 kHz, any length. Returns probabilities [n_complete_frames]."""
        buf = np.concatenate([self.pending, np.asarray(audio, np.float32)])
        n = len(buf) // FRAME
        probs = np.empty(n, np.float32)
        for i in range(n):
            frame = buf[i * FRAME : (i + 1) * FRAME]
            x = np.concatenate([self.context, frame])[None, :]
            p, self.state = self.model.run(x, self.state)
            probs[i] = p[0]
            self.context = frame[-_CONTEXT:].copy()
        self.pending = buf[n * FRAME :].copy()
        return probs


@dataclass(frozen=True)
class VADConfig:
    """Server VAD parameters (names follow OpenAI's `turn_detection: server_vad`)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 96  # shorter blips (clicks, breaths) never open a segment

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if not 0 <= self.prefix_padding_ms <= 5000 or not 0 <= self.silence_duration_ms <= 10000:
            raise ValueError("prefix_padding_ms must be in [0, 5000] and silence_duration_ms in [0, 10000]")


@dataclass(frozen=True)
class VADEvent:
    """`kind` is "start" or "end"; times are seconds from the start of the stream."""

    kind: str
    time: float


class SpeechSegmenter:
    """Hysteresis over frame probabilities → speech start/end events.

    Speech starts after `min_speech_ms` of frames above `threshold`; it ends after `silence_duration_ms`
    of frames below `threshold - 0.15` (the usual Silero hysteresis, so a word's soft tail does not
    flicker the state). Start times are pulled back by `prefix_padding_ms` so the caller keeps the onset.
    """

    def __init__(self, config: VADConfig):
        self.config = config
        self.frames_seen = 0
        self.in_speech = False
        self._above = 0
        self._below = 0
        self.silence_frames = 0  # consecutive quiet frames while in speech (for speculative finals)

    @property
    def now(self) -> float:
        return self.frames_seen * FRAME_SECONDS

    def push(self, probs: np.ndarray) -> list[VADEvent]:
        cfg = self.config
        need_speech = max(1, round(cfg.min_speech_ms / 1000 / FRAME_SECONDS))
        need_silence = max(1, round(cfg.silence_duration_ms / 1000 / FRAME_SECONDS))
        low = max(0.01, cfg.threshold - 0.15)
        events: list[VADEvent] = []
        for p in probs:
            self.frames_seen += 1
            if not self.in_speech:
                self._above = self._above + 1 if p >= cfg.threshold else 0
                if self._above >= need_speech:
                    self.in_speech = True
                    self.silence_frames = 0
                    onset = (self.frames_seen - self._above) * FRAME_SECONDS
                    events.append(VADEvent("start", max(0.0, onset - cfg.prefix_padding_ms / 1000)))
            else:
                self.silence_frames = self.silence_frames + 1 if p < low else 0
                if self.silence_frames >= need_silence:
                    self.in_speech = False
                    self._above = 0
                    end = (self.frames_seen - self.silence_frames) * FRAME_SECONDS
                    events.append(VADEvent("end", end))
                    self.silence_frames = 0
        return events
