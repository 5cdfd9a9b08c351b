"""What realtime sessions take from the process's models: a typed hub, passed in at construction.

The server builds one (`audio_server.models.ModelHub` satisfies these Protocols) and hands it to every
`RealtimeHost`; tests and the in-process driver (`realtime.unified_turn`) pass small objects of their own.
Nothing in `realtime/` looks past this seam — no app state, no `getattr` probing for optional members: what a
session reads is declared here.

A hub serves one response pipeline (`pipeline`), and a pipeline's backend (`realtime.backends`) reads only its
own capabilities: the cascade `CascadeModels`, the unified audio LLM `UnifiedModels`.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from realtime.step_audio2_stack import StepAudio2Stack
    from realtime.unified_pipeline import UnifiedStack

Pipeline = Literal["cascade", "unified", "step-audio"]
PIPELINES: tuple[Pipeline, ...] = ("cascade", "unified", "step-audio")


class VoiceActivity(Protocol):
    """Silero VAD (`asr.vad.SileroVAD`): one stream per session over the shared model."""

    def stream(self): ...


class Transcriber(Protocol):
    """One committed turn → its text (`asr.whisper_asr.WhisperASR`)."""

    def transcribe_utterance(self, audio: np.ndarray, language: str | None = None, prompt: str | None = None,
                             beam_size: int = 1) -> str: ...


class Synthesizer(Protocol):
    """Text → int16 PCM at `sample_rate` (`tts.piper_tts.PiperTTS`)."""

    @property
    def sample_rate(self) -> int: ...

    def synthesize_all(self, text: str, options=None) -> np.ndarray: ...


class SessionModels(Protocol):
    """What every realtime session needs, whichever pipeline answers it."""

    @property
    def pipeline(self) -> Pipeline: ...

    def vad(self) -> VoiceActivity: ...


class CascadeModels(SessionModels, Protocol):
    """The cascade's models: Whisper for turns, Piper for answers (the LLM comes as the session's engine)."""

    @property
    def asr_threads(self) -> int:
        """Threads one Whisper decode uses (sizes the realtime ASR pool: `backends.cascade.asr_pool`)."""
        ...

    @property
    def asr_beam_size(self) -> int: ...

    @property
    def tts_executor(self) -> Executor | None:
        """Where sentences are synthesised; None: the realtime TTS pool."""
        ...

    def asr(self, name: str | None = None) -> Transcriber: ...

    def resolve_asr_name(self, requested: str | None) -> str:
        """The ASR model for a session's `transcription.model`; raises ValueError for an unknown one."""
        ...

    def tts(self) -> Synthesizer: ...


class UnifiedModels(SessionModels, Protocol):
    """The unified path's models: tokenizer + audio LLM + vocoder, loaded once per process."""

    def unified(self) -> UnifiedStack: ...


class StepAudioModels(SessionModels, Protocol):
    """The step-audio pipeline's one model: Step-Audio 2 (encoder, LLM, token2wav), loaded once per process."""

    def step_audio2(self) -> StepAudio2Stack: ...


class RealtimeModels(CascadeModels, UnifiedModels, StepAudioModels, Protocol):
    """A hub that can serve either pipeline (the server's `ModelHub`)."""
