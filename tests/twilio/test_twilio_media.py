"""`WS /twilio/media` against a live server: a client speaking the Twilio Media Streams protocol
(PROTOCOLS.md §6.2) with Piper speech converted to 8 kHz μ-law, the embedded VAD/ASR/TTS, and a scripted LLM
(tests/realtime/fakes.py) so the checks do not depend on what a small model says."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest
import websockets

from asr.whisper_asr import DecodeOptions
from audio_server.routes_realtime import live_sessions
from realtime.audio import StreamResampler, ulaw_decode, ulaw_encode
from tests.realtime.conftest import real_engine, say  # noqa: F401  (fixtures)
from tests.realtime.fakes import FakeEngine, Script
from tests.voices import available, speak

pytestmark = pytest.mark.slow
FRAME = 160
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."
STORY = tuple(f"This is sentence number {w} of a long story. " for w in
              ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))


def start_frame(sid: str, fmt: dict | None = None, params: dict | None = None) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid,
                       "start": {"streamSid": sid, "accountSid": "AC1", "callSid": "CA" + sid, "tracks": ["inbound"],
                                 "customParameters": params or {},
                                 "mediaFormat": fmt or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


class Caller:
    """A Twilio media stream: sends the documented frames, records every frame it gets with its arrival time."""

    def __init__(self, ws, sid: str):
        self.ws, self.sid = ws, sid
        self.frames: list[dict] = []
        self.times: list[float] = []
        self.chunk = 0
        self.closed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server, sid: str, params: dict | None = None) -> "Caller":
        ws = await websockets.connect(server.ws_url + "/twilio/media", max_size=None)
        caller = cls(ws, sid)
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(start_frame(sid, params=params))
        return caller

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                self.frames.append(json.loads(msg))
                self.times.append(time.perf_counter())
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def send_audio(self, mulaw: bytes, speed: float = 1.0, on_frame=None) -> None:
        """20 ms media frames paced at `speed` × real time."""
        t0 = time.perf_counter()
        for n, i in enumerate(range(0, len(mulaw), FRAME)):
            frame = mulaw[i:i + FRAME].ljust(FRAME, b"\xff")
            self.chunk += 1
            await self.ws.send(json.dumps({"event": "media", "sequenceNumber": str(self.chunk + 1),
                                           "streamSid": self.sid,
                                           "media": {"track": "inbound", "chunk": str(self.chunk),
                                                     "timestamp": str(self.chunk * 20),
                                                     "payload": base64.b64encode(frame).decode()}}))
            if on_frame is not None:
                on_frame(n, time.perf_counter())
            await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 / speed - time.perf_counter()))

    def of(self, event: str, after: int = 0) -> list[tuple[int, dict]]:
        return [(i, f) for i, f in enumerate(self.frames) if f["event"] == event and i >= after]

    async def wait(self, event: str, after: int = 0, timeout: float = 30.0) -> int:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            found = self.of(event, after)
            if found:
                return found[0][0]
            if self.closed.is_set():
                break
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {event!r} after frame {after}; got {[f['event'] for f in self.frames[after:]]}")

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.closed.wait(), 5)


def mulaw_speech(synth, text: str) -> bytes:
    return ulaw_encode(synth(text, 8000))


def silence(seconds: float) -> bytes:
    return b"\xff" * int(8000 * seconds)


def transcribe(hub, mulaw: bytes) -> str:
    audio = ulaw_decode(mulaw).astype(np.float32) / 32768.0
    audio16 = StreamResampler(8000, 16000)(audio, last=True)
    return hub.asr().transcribe(audio16, DecodeOptions(language="en")).text


def wait_sessions_gone(app, engine, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and (live_sessions(app) or engine.open_streams):
        time.sleep(0.05)
    assert not live_sessions(app) and engine.open_streams == 0

    async def task_names():
        return [t.get_name() for t in asyncio.all_tasks()]

    names = asyncio.run_coroutine_threadsafe(task_names(), app.state.realtime_loop).result(5)
    assert not [n for n in names if n.startswith("rt:")], names


# ---- 1. spoken questions get spoken answers, then a mark ------------------------------------------------------
#: Real questions in more than one voice (tests/voices.py). Whether one borderline clip is heard right can differ
#: between CPUs (on an Intel Xeon, Piper's "What is the capital of France?" at 8 kHz came back "...of friends?"),
#: so what is asserted is the set: most are understood, and every call is answered the same way.
CAPITAL_QUESTIONS = [
    ("What is the capital of France?", "piper"),
    ("Which city is the capital of France?", "piper@0.8"),
    ("Do you know the capital of France?", "piper@1.2"),
    ("Do you know the capital of France?", "espeak:en-us@150"),
    ("Tell me the capital of France, please.", "espeak:en-gb@150"),
    ("What is the capital of France?", "espeak:en-us@150"),
]


async def phone_call(server, sid: str, mulaw: bytes, speed: float = 2.0, timeout: float = 60) -> bytes:
    """One call: the question, then the caller listens; returns the answer's μ-law once its mark has come."""
    caller = await Caller.open(server, sid)
    await caller.send_audio(silence(0.3) + mulaw + silence(1.0), speed=speed)
    mark_at = await caller.wait("mark", timeout=timeout)
    media = caller.of("media")
    assert media and all(i < mark_at for i, _ in media)  # the mark follows the audio
    assert all(f["streamSid"] == sid for f in caller.frames)
    payloads = [base64.b64decode(f["media"]["payload"]) for _, f in media]
    assert all(len(p) == FRAME for p in payloads)
    mark = caller.frames[mark_at]["mark"]["name"]
    assert mark.startswith("resp_")
    await caller.ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": mark}}))
    await caller.ws.send(json.dumps({"event": "stop", "streamSid": sid, "stop": {"callSid": "CA" + sid}}))
    await asyncio.wait_for(caller.closed.wait(), 10)  # stop ends the call: the server closes
    return b"".join(payloads)


def test_spoken_questions_get_mulaw_answers_and_marks(server, hub):
    cases = available(CAPITAL_QUESTIONS)
    heard, answers = [], []
    for n, (question, voice) in enumerate(cases):
        engine = FakeEngine(Script((ANSWER,)))
        server.app.state.chat_engine = engine
        audio = asyncio.run(phone_call(server, f"MZq{n}", ulaw_encode(speak(hub, question, voice, 8000))))
        heard.append(" ".join(m.content for m in engine.requests[0].messages if m.role == "user").lower())
        answers.append(transcribe(hub, audio).lower())
        print(f"\n{voice:18s} {question!r} heard as {heard[-1]!r}; answer ({len(audio) / 8:.0f} ms) heard as "
              f"{answers[-1]!r}")
        wait_sessions_gone(server.app, engine)
    understood = sum("capital" in h and "france" in h for h in heard)
    print(f"understood {understood} of {len(cases)} questions")
    assert understood >= len(cases) - 2, heard
    assert sum("paris" in a and "capital" in a for a in answers) >= len(cases) - 1, answers


def test_real_llm_answers_phone_questions(server, hub, real_engine):  # noqa: F811 (the imported fixture)
    """Calls with the embedded LLM instead of a script: the answers must be right for most of them."""
    cases = available(CAPITAL_QUESTIONS[:5])
    server.app.state.chat_engine = real_engine
    answers = []
    try:
        for n, (question, voice) in enumerate(cases):
            audio = asyncio.run(phone_call(server, f"MZreal{n}", ulaw_encode(speak(hub, question, voice, 8000)),
                                           timeout=90))
            answers.append(transcribe(hub, audio).lower())
            print(f"\n{voice:18s} {question!r}: {real_engine.model_id} answered, heard as {answers[-1]!r}")
    finally:
        server.app.state.chat_engine = None
    assert sum("paris" in a for a in answers) >= len(cases) - 2, answers


# ---- 2. barge-in: clear at once, no more of that response ----------------------------------------------------
def test_barge_in_sends_clear_and_stops_the_response(server, say):  # noqa: F811 (the imported fixture)
    engine = FakeEngine(Script(STORY, delay_s=0.05), Script(("Sure, I will stop.",)))
    server.app.state.chat_engine = engine
    question = mulaw_speech(say, "Tell me a long story please.")
    interruption = mulaw_speech(say, "Stop, stop, that is enough, thank you.")

    async def scenario():
        caller = await Caller.open(server, "MZbarge")
        await caller.send_audio(silence(0.3) + question + silence(1.0), speed=4.0)
        first = await caller.wait("media", timeout=40)
        await caller.send_audio(silence(1.0))  # the bot talks for a while (the caller's line is quiet)
        assert not caller.of("clear")
        onset: list[float] = []
        sent_end: list[float] = []

        def stamp(n, t):
            if n == 0:
                onset.append(t)
            sent_end[:] = [t]

        await caller.send_audio(interruption, on_frame=stamp)
        clear_at = await caller.wait("clear", after=first, timeout=5)
        latency_ms = (caller.times[clear_at] - onset[0]) * 1000
        print(f"\nbarge-in: speech onset sent → clear received in {latency_ms:.0f} ms")
        # Media after the clear can only be the next response, which starts after the interruption has ended.
        later = [caller.times[i] for i, _ in caller.of("media", clear_at)]
        assert all(t > sent_end[0] for t in later), "media of the interrupted response followed clear"
        marks_before = [f["mark"]["name"] for _, f in caller.of("mark") if _ < clear_at]
        assert not marks_before  # the long story never finished
        await caller.send_audio(silence(1.0), speed=4.0)
        mark_at = await caller.wait("mark", after=clear_at, timeout=30)  # the answer to the interruption
        # The interrupted answer is truncated to what was heard: far less than the story.
        runner = next(iter(live_sessions(server.app).values()))
        assistant = [i for i in runner.session.conversation.items if i.role == "assistant"]
        heard = assistant[0].content[0]
        print(f"truncated to {heard.audio_ms:.0f} ms: {heard.transcript!r}")
        assert assistant[0].status == "incomplete" and "number ten" not in heard.transcript
        played_ms = (caller.times[clear_at] - caller.times[first]) * 1000  # Twilio plays in real time
        assert heard.audio_ms <= played_ms + 100 and heard.audio_ms < 5000
        await caller.close()
        return latency_ms, mark_at

    latency_ms, _ = asyncio.run(scenario())
    # The 300 ms goal is measured and printed above, not asserted: timing on a shared CI box is not behaviour.
    wait_sessions_gone(server.app, engine)


# ---- 3. DTMF, stop, bad frames and a dropped socket do not disturb another call ---------------------------
def _errors(server, code: str) -> float:
    return server.app.state.metrics.registry.get_sample_value(
        "voxline_ws_protocol_errors_total", {"kind": "twilio", "code": code}) or 0.0


def test_bad_frames_and_dropped_socket_do_not_affect_another_call(server, say):  # noqa: F811 (the imported fixture)
    engine = FakeEngine(default=Script((ANSWER,)))
    server.app.state.chat_engine = engine
    question = mulaw_speech(say, QUESTION)
    before = {c: _errors(server, c) for c in ("invalid_json", "unknown_event", "invalid_base64",
                                              "invalid_media_format")}

    async def wrong_format():
        ws = await websockets.connect(server.ws_url + "/twilio/media")
        await ws.send(start_frame("MZwrong", fmt={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}))
        got = []
        try:
            async for msg in ws:
                got.append(msg)
        except websockets.ConnectionClosed:
            pass
        assert got == [] and ws.close_code == 1003

    async def bad_call():
        caller = await Caller.open(server, "MZbad")
        for frame in ("{nope", json.dumps({"event": "bogus", "streamSid": "MZbad"}),
                      json.dumps({"event": "media", "streamSid": "MZbad", "media": {"payload": "%%%not base64"}}),
                      json.dumps({"event": "ping"})):
            await caller.ws.send(frame)
        await caller.send_audio(question[: 8000], speed=4.0)
        await caller.wait("pong", timeout=5)
        caller.ws.transport.abort()  # dropped mid-utterance, no stop

    async def good_call():
        caller = await Caller.open(server, "MZgood")
        await caller.ws.send(json.dumps({"event": "dtmf", "streamSid": "MZgood",
                                         "dtmf": {"track": "inbound_track", "digit": "5"}}))
        await caller.send_audio(silence(0.3) + question + silence(1.0), speed=2.0)
        mark_at = await caller.wait("mark", timeout=40)
        media = caller.of("media")
        assert media and all(f["streamSid"] == "MZgood" for _, f in media)
        assert mark_at > media[-1][0]
        await caller.ws.send(json.dumps({"event": "stop", "streamSid": "MZgood", "stop": {"callSid": "CAMZgood"}}))
        await asyncio.wait_for(caller.closed.wait(), 10)

    async def scenario():
        await asyncio.gather(good_call(), bad_call(), wrong_format())

    asyncio.run(scenario())
    for code in before:
        assert _errors(server, code) == before[code] + 1, code
    prompts = [" ".join(m.content for m in r.messages) for r in engine.requests]
    assert any("[DTMF 5]" in p for p in prompts), prompts
    wait_sessions_gone(server.app, engine)
    assert server.gauge("voxline_sessions_active", kind="twilio") == 0
