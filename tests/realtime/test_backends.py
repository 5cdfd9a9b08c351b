"""The response-backend seam: a backend only yields typed outputs, and the runner — with no code for any one
backend — turns them into the session's events. Plus the small defects fixed on the way (issue 16, point 5)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np

from asr.sample_buffer import SampleBuffer
from realtime.backends.base import AudioChunk, Finished, Played, ResponseRequest, TextDelta
from realtime.backends.cascade import CascadeBackend
from realtime.pipeline import PipelineOptions
from realtime.protocol import Dialect, json_sink
from realtime.runner import SessionRunner
from realtime.session import RealtimeSession
from realtime.turns import InputBuffer
from realtime.unified_pipeline import MAX_STATS, UnifiedOptions, UnifiedSession
from realtime.unified_turn import Collector
from runtime.audio_decoding import AudioChatFormat
from runtime.chat_api import ToolCall
from tests.realtime.fakes import FakeEngine, FakeModels, Script


class ScriptedBackend:
    """A backend of no pipeline at all: it yields what it is given and records what it is told."""

    def __init__(self, outputs, fail: Exception | None = None):
        self.outputs, self.fail = outputs, fail
        self.requests: list[ResponseRequest] = []
        self.played: list[Played | None] = []
        self.started = self.closed = False

    def start(self):
        self.started = True

    def close(self):
        self.closed = True

    def audio_appended(self, session):
        pass

    def speculate(self, cmd):
        pass

    def transcribe(self, cmd, session):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result("scripted")
        return fut

    async def respond(self, request):
        self.requests.append(request)
        for output in self.outputs:
            ack = yield output
            if isinstance(output, AudioChunk):
                self.played.append(ack)
        if self.fail is not None:
            raise self.fail


async def _respond(backend, body: dict | None = None) -> list[dict]:
    client = Collector()
    session = RealtimeSession("sess_b", FakeModels().vad())
    runner = SessionRunner(session, FakeModels(), None, json_sink(client.send, Dialect.GA, "sess_b"),
                           options=PipelineOptions(lead_ms=10_000), backend=backend)
    await runner.start()
    try:
        await runner.handle_text(json.dumps({"type": "response.create", **({"response": body} if body else {})}))
        await client.wait_for("response.done", timeout=10)
    finally:
        await runner.close()
    return client.events


def test_runner_turns_a_fake_backends_outputs_into_the_response():
    pcm = (np.sin(np.arange(4800) / 5) * 8000).astype(np.int16)  # 300 ms at 16 kHz
    call = ToolCall("call_1", "lookup", '{"q": "x"}')
    backend = ScriptedBackend([TextDelta("Hello "), AudioChunk(pcm, 16000, transcript="Hello"), TextDelta("there."),
                               AudioChunk(pcm, 16000), call, Finished("completed", usage=(7, 3))])
    events = asyncio.run(_respond(backend))
    assert backend.started and backend.closed
    types = [e["type"] for e in events]
    assert types.count("response.output_audio_transcript.delta") == 2
    audio = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert len(audio) >= 6  # 600 ms in 100 ms deltas, plus the resampler's tail
    assert types.index("response.function_call_arguments.done") > max(i for i, t in enumerate(types)
                                                                       if t == "response.output_audio.delta")
    done = events[-1]
    assert done["type"] == "response.done" and done["response"]["status"] == "completed"
    assert done["response"]["usage"]["input_tokens"] == 7 and done["response"]["usage"]["output_tokens"] == 3
    message = done["response"]["output"][0]
    assert message["content"][0]["transcript"] == "Hello there."
    # every chunk was acknowledged once out, with the item it became and where it ends
    assert [p.item_id for p in backend.played] == [message["id"]] * 2
    assert 0 < backend.played[0].end_ms < backend.played[1].end_ms
    request = backend.requests[0]
    assert request.options.audio_out and request.context == ()


def test_a_backend_that_raises_fails_only_its_response():
    backend = ScriptedBackend([TextDelta("Hi")], fail=RuntimeError("boom"))
    done = asyncio.run(_respond(backend))[-1]
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "response_failed"
    assert "boom" in done["response"]["status_details"]["error"]["message"]


def test_a_stream_that_ends_without_finished_is_failed_by_the_runner():
    done = asyncio.run(_respond(ScriptedBackend([TextDelta("Hi")])))[-1]
    assert done["response"]["status"] == "failed"


def test_cascade_backend_through_the_same_runner_path():
    engine = FakeEngine(Script(("One. ", "Two."), finish="length"))
    backend = CascadeBackend("sess_b", FakeModels(), engine, PipelineOptions(lead_ms=10_000))
    events = asyncio.run(_respond(backend, {"output_modalities": ["text"]}))
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["One. ", "Two."]
    done = events[-1]["response"]
    assert done["status"] == "incomplete" and done["status_details"]["reason"] == "max_output_tokens"


# ---- defects ---------------------------------------------------------------------------------------------
def test_vocoder_session_reports_dropped_ids_before_finish():
    from vocoder.model import StreamingVocoder, VocoderSession

    voc = VocoderSession(StreamingVocoder.tiny(0))
    assert voc.dropped_ids == 0  # readable at any time, not only after finish()


def test_unified_stats_are_bounded():
    unified = UnifiedSession("sess_s", lambda: None)
    try:
        for i in range(MAX_STATS + 10):
            unified.record(f"resp_{i}", i)
        assert len(unified.stats) == MAX_STATS
        assert f"resp_{MAX_STATS + 9}" in unified.stats and "resp_0" not in unified.stats
    finally:
        unified.close()


def test_prompt_reads_and_forget_trims():
    unified = UnifiedSession("sess_p", lambda: None)
    try:
        unified.turns = {"item_a": [10, 11, 12, 13, 14], "item_gone": [20, 21, 22, 23, 24]}
        item = SimpleNamespace(id="item_a", type="message", role="user", content=[])
        stack = SimpleNamespace(fmt=AudioChatFormat(), options=UnifiedOptions())
        fmt = stack.fmt
        assert unified.prompt([item], stack, 10) == [fmt.user, 10, 11, 12, 13, 14, fmt.end, fmt.assistant]
        assert set(unified.turns) == {"item_a", "item_gone"}  # building a prompt deletes nothing
        unified.forget({"item_a"})
        assert set(unified.turns) == {"item_a"}
    finally:
        unified.close()


def test_sample_buffer_matches_concatenation():
    rng = np.random.default_rng(0)
    buf, ref = SampleBuffer(64), np.zeros(0, np.float32)
    for _ in range(300):
        x = rng.standard_normal(int(rng.integers(0, 200))).astype(np.float32)
        buf.append(x)
        ref = np.concatenate([ref, x])
        if rng.random() < 0.3:
            n = int(rng.integers(0, len(ref) + 5))
            buf.drop(n)
            ref = ref[n:]
        a, b = sorted(int(v) for v in rng.integers(-10, len(ref) + 10, 2))
        np.testing.assert_array_equal(buf.view(a, b), ref[max(0, a):max(0, min(b, len(ref)))])
        assert len(buf) == len(ref)


def test_input_buffer_appends_without_copying_what_it_holds():
    buf = InputBuffer(max_seconds=60)
    frame = np.ones(320, np.float32)  # 20 ms
    buf.append(frame, 0.0)
    storage = buf._audio._buf
    for i in range(40):  # 0.8 s: within the first second of storage, no append moves what is held
        buf.append(frame * i, 0.0)
        assert buf._audio._buf is storage
    np.testing.assert_array_equal(buf.slice(320 * 5, 320 * 6), frame * 4)
