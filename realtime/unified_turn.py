"""One spoken turn through a realtime session in-process: what `voxline pipeline` and bench/pipeline.py run.

Nothing here is a second pipeline. A `RealtimeHost` runs exactly as behind `/v1/realtime`; only the
transport is replaced by a list that collects the serialized server events. The
"client" sends what a Realtime client sends — the audio as 24 kHz pcm16 in 40 ms
`input_audio_buffer.append`s, `input_audio_buffer.commit`, `response.create` — and the answer is the
concatenated `response.output_audio.delta`s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, replace

import numpy as np

from realtime.audio import INTERNAL_RATE, StreamResampler
from realtime.config import SessionConfig
from realtime.host import RealtimeHost
from realtime.pipeline import PipelineOptions
from realtime.protocol import Dialect, json_sink
from realtime.runner import SessionRunner
from realtime.unified_pipeline import UnifiedStack
from realtime.unified_response import UnifiedTurnStats

WIRE_RATE = 24000  # pcm16, the Realtime default format


class LocalModels:
    """A hub for sessions on the unified path (`realtime.hub.UnifiedModels`), around one `UnifiedStack`."""

    pipeline = "unified"

    def __init__(self, stack: UnifiedStack, vad=None):
        self.stack, self._vad = stack, vad

    def unified(self) -> UnifiedStack:
        return self.stack

    def vad(self):
        if self._vad is None:
            from asr.vad import SileroVAD

            self._vad = SileroVAD.shared()
        return self._vad


class Collector:
    """The transport: keeps every serialized event with its arrival time."""

    def __init__(self):
        self.events: list[dict] = []
        self.times: list[float] = []
        self.arrived = asyncio.Event()

    async def send(self, wire: dict) -> None:
        self.events.append(wire)
        self.times.append(time.perf_counter())
        self.arrived.set()

    async def wait_for(self, type_: str, after: int = 0, timeout: float = 120.0) -> dict:
        deadline = time.perf_counter() + timeout
        while True:
            for e in self.events[after:]:
                if e["type"] == type_:
                    return e
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no {type_} after event {after}: {[e['type'] for e in self.events[after:]]}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.05)
            except TimeoutError:
                pass

    def audio(self, after: int = 0) -> bytes:
        return b"".join(base64.b64decode(e["delta"]) for e in self.events[after:]
                        if e["type"] in ("response.output_audio.delta", "response.audio.delta"))


@dataclass
class TurnResult:
    audio: bytes  # pcm16 at WIRE_RATE, every audio delta of the response
    done: dict  # the response.done event
    first_audio_s: float | None  # commit sent → first audio delta out of the session
    done_s: float  # commit sent → response.done
    encoded_s: float | None  # commit sent → the turn's ids stored (its transcription event)
    stats: UnifiedTurnStats
    events: list[dict]

    @property
    def audio_s(self) -> float:
        return len(self.audio) / 2 / WIRE_RATE


def pcm16_wire(audio16k: np.ndarray) -> bytes:
    """16 kHz float audio → 24 kHz pcm16 bytes, as a Realtime client would send it."""
    pcm = StreamResampler(INTERNAL_RATE, WIRE_RATE)(np.asarray(audio16k, np.float32), last=True)
    return (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes()


async def append(runner: SessionRunner, wire: bytes, chunk_ms: int = 40, realtime: bool = False) -> None:
    """Send `wire` in `chunk_ms` appends: as fast as possible, or paced like a microphone (`realtime`)."""
    step = WIRE_RATE * 2 * chunk_ms // 1000
    t0 = time.perf_counter()
    for i in range(0, len(wire), step):
        await runner.handle_text(json.dumps({"type": "input_audio_buffer.append",
                                             "audio": base64.b64encode(wire[i:i + step]).decode()}))
        due = t0 + (i + step) / (2 * WIRE_RATE) if realtime else 0.0
        await asyncio.sleep(max(0.0, due - time.perf_counter()))


async def run_turn(models, audio16k: np.ndarray, *, temperature: float = 0.0, lead_ms: int = 10_000,
                   realtime_input: bool = False, session_id: str = "sess_local") -> TurnResult:
    """One manual-commit turn (no VAD): append the audio (at real-time speed with `realtime_input`, as a
    microphone would; else as fast as possible), commit, ask for a response, wait for it.
    `lead_ms` 10 s = no pacing, so the timings are compute, not playback."""
    client = Collector()
    config = replace(SessionConfig(), turn_detection=None, temperature=temperature)
    sink = json_sink(client.send, Dialect.GA, session_id)
    runner = RealtimeHost(session_id, None, config, models, None, sink, options=PipelineOptions(lead_ms=lead_ms)).runner
    await runner.start()
    try:
        await append(runner, pcm16_wire(audio16k), realtime=realtime_input)
        mark = len(client.events)
        t_commit = time.perf_counter()
        await runner.handle_text(json.dumps({"type": "input_audio_buffer.commit"}))
        await runner.handle_text(json.dumps({"type": "response.create"}))
        done = await client.wait_for("response.done", after=mark)
        after = list(zip(client.events[mark:], client.times[mark:]))
        firsts = [t for e, t in after if e["type"] in ("response.output_audio.delta", "response.audio.delta")]
        encoded = [t for e, t in after if e["type"].startswith("conversation.item.input_audio_transcription.")]
        t_done = client.times[client.events.index(done)]
        stats = runner.backend.unified.stats[done["response"]["id"]]
        return TurnResult(client.audio(mark), done, firsts[0] - t_commit if firsts else None, t_done - t_commit,
                          encoded[0] - t_commit if encoded else None, stats, list(client.events))
    finally:
        await runner.close()
