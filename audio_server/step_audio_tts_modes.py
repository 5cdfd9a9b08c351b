"""The HTTP speech mode of the step-audio-tts preset over the one loaded Step-Audio-TTS-3B download.

`/v1/audio/speech` calls a synthesiser; :class:`StepAudioTTSSpeaker` presents the stack
(`realtime.step_audio_tts_stack`) in the shape that route already uses (Piper's), so the route stays as it is and
resamples/encodes the 22.05 kHz PCM for the requested format. It runs blocking on the model pool; the decoding itself
is a slot of the stack's one stepping loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tts.piper_tts import OPENAI_VOICE_ALIASES, SentenceAudio, SpeechOptions, UnknownVoice

MODEL_NAME = "step-audio-tts-3b"
TINY_MARKER = "VOXLINE_TINY.json"  # written by runtime.step1.tiny_checkpoint: random weights
VOICE = "default"
ROUTE_DEFAULT_VOICE = "joe"


def is_tiny_download(directory: str | Path) -> bool:
    """Whether ``directory`` is the tiny random test download (its speech is noise)."""
    return (Path(directory) / TINY_MARKER).is_file()


class StepAudioTTSSpeaker:
    """TTS with the reference's voice-cloning prompt (SPEC v1 §7), in the stack's one voice; 22.05 kHz int16 PCM."""

    voices = (VOICE,)

    def __init__(self, stack) -> None:
        self.stack = stack

    @property
    def sample_rate(self) -> int:
        return self.stack.sample_rate

    def resolve_voice(self, voice: str | dict | None) -> str:
        name = (voice.get("id") if isinstance(voice, dict) else voice) or VOICE
        name = name.strip().lower()
        # "joe" is the speech route's default voice name (Piper's): a request that names no voice gets this one
        if name in (VOICE, ROUTE_DEFAULT_VOICE) or name in OPENAI_VOICE_ALIASES:
            return VOICE
        raise UnknownVoice(f"unknown voice {name!r}; the step-audio-tts preset speaks with one voice, {VOICE!r} "
                           "(OpenAI voice names are accepted as aliases)")

    def synthesize(self, text: str, options: SpeechOptions = SpeechOptions()) -> Iterator[SentenceAudio]:
        text = text.strip()
        if not text:
            return
        for pcm in self.stack.speak(text):
            yield SentenceAudio(text, pcm)

    def synthesize_all(self, text: str, options: SpeechOptions = SpeechOptions()) -> np.ndarray:
        parts = [s.pcm for s in self.synthesize(text, options)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)
