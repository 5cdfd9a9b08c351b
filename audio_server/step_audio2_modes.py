"""The HTTP modes of the step-audio preset over the one loaded Step-Audio 2 model: transcription and speech.

`/v1/audio/transcriptions` and `/v1/audio/speech` call a transcriber and a synthesiser; these two present the
stack (`realtime.step_audio2_stack`) in the shapes those routes already use (Whisper's and Piper's), so the routes
stay as they are. Both run blocking on the model pool; the work itself is slots of the stack's one stepping loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from asr.whisper_asr import DecodeOptions, Segment, Transcript
from tts.piper_tts import OPENAI_VOICE_ALIASES, SentenceAudio, SpeechOptions, UnknownVoice

MODEL_NAME = "step-audio-2"
VOICE = "default"
ROUTE_DEFAULT_VOICE = "joe"


class StepAudio2Transcriber:
    """ASR with the instruct prompt of SPEC2 §2 (the language and prompt options do not apply to it)."""

    def __init__(self, stack) -> None:
        self.stack = stack

    def transcribe(self, audio: np.ndarray, options: DecodeOptions = DecodeOptions()) -> Transcript:
        segments, language = self.stream_segments(audio, options)
        segs = tuple(segments)
        return Transcript(" ".join(s.text for s in segs).strip(), language, len(audio) / 16000, segs)

    def stream_segments(self, audio: np.ndarray, options: DecodeOptions = DecodeOptions()
                        ) -> tuple[Iterator[Segment], str]:
        from runtime.sampling import SamplingParams

        def one() -> Iterator[Segment]:
            text = self.stack.transcribe(audio, SamplingParams(temperature=options.temperature))
            yield Segment(0, 0.0, len(audio) / 16000, text, tokens=len(self.stack.text.encode(text)) if text else 0)

        return one(), options.language or "en"

    def prompt_tokens(self, prompt: str | None) -> int:
        return 0  # the ASR prompt is the model's own (a text prompt is not used)


class OneVoiceSpeaker:
    """A checkpoint preset's TTS in its stack's one voice (``stack.speak(text)`` yields int16 PCM at
    ``stack.sample_rate``), in the shape the speech route uses (Piper's). Step-Audio 2 speaks with the base-model
    task prompt of SPEC2 §2; Step-Audio-TTS-3B with its voice-cloning prompt (SPEC v1 §7)."""

    voices = (VOICE,)

    def __init__(self, stack, preset: str) -> None:
        self.stack, self.preset = stack, preset

    @property
    def sample_rate(self) -> int:
        return self.stack.sample_rate

    def resolve_voice(self, voice: str | dict | None) -> str:
        name = (voice.get("id") if isinstance(voice, dict) else voice) or VOICE
        name = name.strip().lower()
        # "joe" is the speech route's default voice name (Piper's): a request that names no voice gets this one
        if name in (VOICE, ROUTE_DEFAULT_VOICE) or name in OPENAI_VOICE_ALIASES:
            return VOICE
        raise UnknownVoice(f"unknown voice {name!r}; the {self.preset} preset speaks with one voice, {VOICE!r} "
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
