"""Fixtures for the end-to-end unified pipeline tests: the tiny stack (random weights: mechanics, never
speech quality), real speech from tests/data, and sessions driven in-process through `SessionRunner`
(the transport is a list; every model is the real tiny one, VAD is the real Silero)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from realtime.config import SessionConfig
from realtime.host import RealtimeHost
from realtime.pipeline import PipelineOptions
from realtime.protocol import Dialect, json_sink
from realtime.runner import SessionRunner
from realtime.unified_pipeline import UnifiedStack
from realtime.unified_turn import Collector, LocalModels

DATA = Path(__file__).resolve().parent.parent / "data"
SPEECH = "librivox/sense_and_sensibility_01_austen_64kb-0880.wav"  # "he was not an ill disposed young man", 3 s


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread (OpenMP spin-waits make 2 much slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def stack() -> UnifiedStack:
    return UnifiedStack.tiny()


def clip(rel: str = SPEECH) -> np.ndarray:
    audio, rate = soundfile.read(DATA / rel, dtype="float32")
    assert rate == 16000
    return audio


def make_runner(models: LocalModels, *, vad: bool = False, lead_ms: int = 10_000, temperature: float = 0.0,
                session_id: str = "sess_pl") -> tuple[SessionRunner, Collector]:
    """A session as `/v1/realtime` builds it, with server VAD (Silero) or manual commits."""
    config = replace(SessionConfig(), temperature=temperature)
    if not vad:
        config = replace(config, turn_detection=None)
    client = Collector()
    host = RealtimeHost(session_id, models.vad() if vad else None, config, models, None,
                        json_sink(client.send, Dialect.GA, session_id), options=PipelineOptions(lead_ms=lead_ms))
    runner = host.runner
    return runner, client


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]
