"""Test doubles for realtime sessions: a scripted chat engine, an energy VAD, a tone TTS, a canned ASR."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from runtime.chat_api import ChatDelta, ChatRequest, ToolCall


@dataclass
class Script:
    """One scripted answer: text pieces, then optional tool calls, then the finish reason."""

    pieces: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    finish: str = "stop"
    delay_s: float = 0.0  # per piece (a slow model)


class FakeEngine:
    """`ChatEngine` with scripted answers. Records every request and whether each stream was closed."""

    model_id = "fake-llm"
    supports_vision = False

    def __init__(self, *scripts: Script, default: Script | None = None,
                 reply: Callable[[ChatRequest], Script] | None = None):
        """`reply(request)`, when given, makes each answer from its request (after the scripts run out)."""
        self.scripts = list(scripts)
        self.default = default or Script(("Okay.",))
        self.reply = reply
        self.requests: list[ChatRequest] = []
        self.open_streams = 0
        self.closed_streams = 0

    def stream(self, request: ChatRequest):
        self.requests.append(request)
        if self.scripts:
            script = self.scripts.pop(0)
        else:
            script = self.reply(request) if self.reply is not None else self.default
        return self._run(script)

    async def _run(self, script: Script):
        self.open_streams += 1
        try:
            n = 0
            for piece in script.pieces:
                if script.delay_s:
                    await asyncio.sleep(script.delay_s)
                n += 1
                yield ChatDelta(text=piece)
            for call in script.tool_calls:
                yield ChatDelta(tool_call=call)
            yield ChatDelta(finish_reason=script.finish, prompt_tokens=10, completion_tokens=n)  # type: ignore[arg-type]
        finally:
            self.open_streams -= 1
            self.closed_streams += 1


class EnergyVAD:
    """VAD double: a 512-sample frame is speech when its RMS exceeds 0.02."""

    def stream(self):
        return _EnergyStream()


class _EnergyStream:
    def __init__(self):
        self.pending = np.zeros(0, np.float32)

    def feed(self, audio: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self.pending, np.asarray(audio, np.float32)])
        n = len(buf) // 512
        frames = buf[: n * 512].reshape(n, 512)
        self.pending = buf[n * 512:]
        return (np.sqrt((frames ** 2).mean(axis=1)) > 0.02).astype(np.float32)


class ToneTTS:
    """TTS double: 60 ms of a 220 Hz tone per character, at Piper's rate."""

    sample_rate = 22050

    def __init__(self):
        self.calls: list[str] = []

    def synthesize_all(self, text: str, options=None) -> np.ndarray:
        self.calls.append(text)
        n = int(0.06 * len(text) * self.sample_rate)
        t = np.arange(n) / self.sample_rate
        return (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)


@dataclass
class _Transcript:
    text: str


class CannedASR:
    def __init__(self, texts: list[str] | None = None):
        self.texts = list(texts or [])
        self.calls = 0
        self.prompts: list[str | None] = []  # what each utterance decode was prompted with

    def transcribe(self, audio, options=None) -> _Transcript:
        self.calls += 1
        return _Transcript(self.texts.pop(0) if self.texts else "hello")

    def transcribe_utterance(self, audio, language=None, prompt=None, beam_size=1) -> str:
        self.prompts.append(prompt)
        return self.transcribe(audio).text


@dataclass
class FakeModels:
    asr_model: CannedASR = field(default_factory=CannedASR)
    tts_model: ToneTTS = field(default_factory=ToneTTS)
    vad_model: EnergyVAD = field(default_factory=EnergyVAD)
    executor: object = None  # the loop's default executor
    pipeline: str = "cascade"
    asr_threads: int = 1
    asr_beam_size: int = 1
    tts_executor: object = None

    def resolve_asr_name(self, requested=None, batch=False):
        return requested

    def asr(self, name=None):
        return self.asr_model

    def tts(self):
        return self.tts_model

    def vad(self):
        return self.vad_model


def tone(seconds: float, rate: int = 24000, amplitude: float = 0.3) -> np.ndarray:
    """A 'speech' burst for EnergyVAD: int16 samples."""
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 300 * t) * amplitude * 32767).astype(np.int16)


def silence(seconds: float, rate: int = 24000) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.int16)
