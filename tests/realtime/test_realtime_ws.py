"""`/v1/realtime` driven by the official `openai` SDK (GA `client.realtime.connect` and beta
`client.beta.realtime.connect`) against a live server with the embedded VAD, ASR and TTS.

The spoken-question test uses the real LLM; the others script the LLM (tests/realtime/fakes.py) so that
what they check — barge-in timing, truncation, tools, codecs, robustness — does not depend on what a
0.5B model happens to say.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import openai
import pytest

from asr.whisper_asr import DecodeOptions
from realtime.audio import PCMA, PCMU, StreamResampler, alaw_encode, decode_bytes, ulaw_encode
from runtime.chat_api import ToolCall
from tests.realtime.conftest import b64, pcm_bytes, stream
from tests.realtime.fakes import FakeEngine, Script

pytestmark = pytest.mark.slow


class Reader:
    """Reads every server event in the background, stamped with its arrival time."""

    def __init__(self, conn):
        self.conn = conn
        self.events: list = []
        self.times: list[float] = []
        self._new = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                ev = await self.conn.recv()
                self.events.append(ev)
                self.times.append(time.perf_counter())
                self._new.set()
        except Exception:  # connection closed
            self._new.set()

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    async def wait(self, *types: str, after: int = 0, timeout: float = 60.0):
        deadline = time.perf_counter() + timeout
        while True:
            for i in range(after, len(self.events)):
                if self.events[i].type in types:
                    return self.events[i]
            if time.perf_counter() > deadline or self.task.done():
                raise AssertionError(f"none of {types} after event {after}; got {self.types()[after:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 0.1)
            except TimeoutError:
                pass

    def index(self, ev) -> int:
        return next(i for i, e in enumerate(self.events) if e is ev)

    def of(self, type_: str, after: int = 0) -> list:
        return [e for e in self.events[after:] if e.type == type_]


def client_for(server) -> openai.AsyncOpenAI:
    # The beta client builds wss:// from base_url unless websocket_base_url is given; GA derives ws:// itself.
    return openai.AsyncOpenAI(base_url=server.base_url + "/v1", websocket_base_url=server.ws_url + "/v1",
                              api_key="unused-on-loopback", max_retries=0)


async def send_raw(conn, text: str) -> None:
    raw = getattr(conn, "send_raw", None)  # GA connection
    await (raw(text) if raw is not None else conn._connection.send(text))


def transcribe(hub, audio: np.ndarray, rate: int) -> str:
    audio16 = StreamResampler(rate, 16000)(np.asarray(audio, np.float32), last=True)
    return hub.asr().transcribe(audio16, DecodeOptions(language="en")).text


def pcm16_audio(deltas) -> np.ndarray:
    return np.frombuffer(b"".join(base64.b64decode(d.delta) for d in deltas), "<i2").astype(np.float32) / 32768


QUESTION = "What is the capital of France?"


# ---- 1. a spoken question, the real LLM ----------------------------------------------------------------
def test_spoken_question_gets_a_spoken_answer(rt_server, hub, real_engine, say):
    rt_server.app.state.chat_engine = None  # no double: the session gets the LLM through the app's wiring
    question = pcm_bytes(np.concatenate([np.zeros(4800, np.int16), say(QUESTION), np.zeros(24000, np.int16)]))

    async def scenario():
        async with client_for(rt_server).realtime.connect(model="gpt-realtime") as conn:
            events = Reader(conn)
            await events.wait("session.created")
            await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"],
                                               "max_output_tokens": 60})
            await events.wait("session.updated")
            await stream(conn, question, 48000, speed=1.0)  # real time, as a microphone sends it
            done = await events.wait("response.done", timeout=120)
            return events, done

    events, done = asyncio.run(scenario())
    transcript = events.of("conversation.item.input_audio_transcription.completed")[0].transcript
    assert "capital" in transcript.lower() and "france" in transcript.lower()
    assert done.response.status == "completed", done.response
    text = "".join(d.delta for d in events.of("response.output_audio_transcript.delta"))
    deltas = events.of("response.output_audio.delta")
    heard = transcribe(hub, pcm16_audio(deltas), 24000)
    print(f"\nquestion heard as {transcript!r}; answer text {text!r}; answer audio transcribed as {heard!r}")
    assert "paris" in text.lower() and "paris" in heard.lower()
    order = events.types()
    assert order.index("input_audio_buffer.speech_started") < order.index("input_audio_buffer.speech_stopped") \
        < order.index("input_audio_buffer.committed") < order.index("response.created") \
        < order.index("response.output_audio.delta") < order.index("response.done")
    assert rt_server.gauge("voxline_realtime_turn_latency_seconds_count", trigger="server_vad") >= 1


# ---- 2. barge-in and truncation -----------------------------------------------------------------------
STORY = tuple(f"This is sentence number {w} of a long story. " for w in
              ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))


def test_barge_in_cancels_within_300_ms_and_truncate_drops_unheard_text(rt_server, say):
    engine = FakeEngine(Script(STORY, delay_s=0.05), Script(("Sure, I will stop.",)))
    rt_server.app.state.chat_engine = engine
    question = pcm_bytes(np.concatenate([say("Tell me a long story."), np.zeros(14400, np.int16)]))
    interrupt = say("Wait, stop please.")
    onset = int(np.argmax(np.abs(interrupt) > 1000))  # first clearly audible sample of the interruption
    interrupt_wire = pcm_bytes(np.concatenate([interrupt, np.zeros(24000, np.int16)]))

    async def scenario():
        async with client_for(rt_server).realtime.connect(model="gpt-realtime") as conn:
            events = Reader(conn)
            await events.wait("session.created")
            await stream(conn, question, 48000, speed=0)
            mic = asyncio.create_task(stream(conn, bytes(48000 * 30), 48000))  # the microphone stays open
            first_audio = await events.wait("response.output_audio.delta", timeout=60)
            t_first_audio = events.times[events.index(first_audio)]
            await asyncio.sleep(1.5)  # listen for a while
            mic.cancel()
            n = len(events.events)
            sent_at: dict[str, float] = {}

            def on_sent(offset: int, t: float) -> None:
                if offset >= 2 * onset and "onset" not in sent_at:
                    sent_at["onset"] = t

            # The reply to the interruption is requested by hand after the truncate: with create_response the
            # server may start it before a slow client's truncate arrives, and then it rightly uses what it had.
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "create_response": False, "interrupt_response": True}}}})
            speaking = asyncio.create_task(stream(conn, interrupt_wire, 48000, on_sent=on_sent))
            started = await events.wait("input_audio_buffer.speech_started", after=n)
            done = await events.wait("response.done", after=n)
            t_done = events.times[events.index(done)]
            rid = done.response.id
            # The client stops playback now and tells the server what was heard, as a real client does.
            played_ms = int((sent_at["onset"] - t_first_audio) * 1000)
            item_id = done.response.output[0].id
            full_text = "".join(d.delta for d in events.of("response.output_audio_transcript.delta")
                                if d.response_id == rid)
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=played_ms)
            truncated = await events.wait("conversation.item.truncated", after=n)
            m = len(events.events)
            await conn.conversation.item.retrieve(item_id=item_id)
            retrieved = await events.wait("conversation.item.retrieved", after=m)
            await speaking
            await asyncio.sleep(0.3)
            late = [e for e in events.events[events.index(done) + 1:]
                    if e.type == "response.output_audio.delta" and e.response_id == rid]
            await conn.response.create()
            await events.wait("response.done", after=events.index(done) + 1, timeout=60)  # the reply to "stop"
            return started, done, t_done - sent_at["onset"], late, truncated, retrieved, full_text, played_ms

    started, done, latency, late, truncated, retrieved, full_text, played_ms = asyncio.run(scenario())
    print(f"\nbarge-in: speech onset → response.done(cancelled) {latency * 1000:.0f} ms "
          f"(goal ≤ 300 ms); the listener had heard {played_ms} ms")
    assert done.response.status == "cancelled" and done.response.status_details.reason == "turn_detected"
    # The 300 ms goal is measured and printed above (and by bench/realtime.py), not asserted: timing on a shared
    # CI box is not behaviour.
    assert not late, "audio deltas of the cancelled response arrived after response.done"
    assert truncated.audio_end_ms == played_ms
    kept = retrieved.item.content[0].transcript
    assert kept and len(kept) < len(full_text) and full_text.startswith(kept.rsplit(" ", 1)[0])
    assert "sentence number ten" not in kept
    # the next model call saw only the heard part of the interrupted answer
    assistant = [m for m in engine.requests[1].messages if m.role == "assistant"]
    assert assistant and assistant[-1].content == kept


# ---- 3. tools (beta client) ----------------------------------------------------------------------------
def test_tool_call_flow_beta(rt_server, hub):
    engine = FakeEngine(Script(tool_calls=(ToolCall("call_abc", "get_weather", '{"city": "Paris"}'),)),
                        Script(("It is sunny and warm in Paris today.",)))
    rt_server.app.state.chat_engine = engine

    async def scenario():
        async with client_for(rt_server).beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
            events = Reader(conn)
            await events.wait("session.created")
            await conn.session.update(session={"turn_detection": None, "tools": [{
                "type": "function", "name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]})
            await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is the weather in Paris?"}]})
            await conn.response.create()
            call = await events.wait("response.function_call_arguments.done")
            first = await events.wait("response.done")
            n = len(events.events)
            await conn.conversation.item.create(item={"type": "function_call_output", "call_id": call.call_id,
                                                      "output": json.dumps({"sky": "sunny", "celsius": 24})})
            await conn.response.create()
            second = await events.wait("response.done", after=n)
            return events, call, first, second, n

    events, call, first, second, n = asyncio.run(scenario())
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert first.response.output[0].type == "function_call" and first.response.status == "completed"
    assert engine.requests[1].messages[-1].role == "tool" and "sunny" in engine.requests[1].messages[-1].content
    assert second.response.status == "completed"
    types = events.types()[n:]
    assert "response.audio.delta" in types and "response.audio_transcript.done" in types  # beta names
    assert "response.output_audio.delta" not in events.types()
    spoken = transcribe(hub, pcm16_audio(events.of("response.audio.delta", after=n)), 24000)
    assert "sunny" in spoken.lower()


# ---- 4. robustness -------------------------------------------------------------------------------------
def test_bad_input_gets_errors_and_the_session_continues(rt_server):
    rt_server.app.state.chat_engine = FakeEngine()
    bad = [
        ('{"type": "input_audio_buffer.dance"}', "unknown_event_type"),
        ('{"type": "session.update", "session": {', "invalid_json"),
        ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_base64"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02\x03")}), "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append",
                     "audio": b64(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(64))}), "invalid_audio"),
        (json.dumps({"type": "session.update", "session": {"voice": "nobody"}}), "invalid_value"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (21 * 1024 * 1024)}), "audio_too_large"),
    ]

    async def scenario():
        async with client_for(rt_server).realtime.connect(model="gpt-realtime") as conn:
            events = Reader(conn)
            await events.wait("session.created")
            codes = []
            for text, _ in bad:
                n = len(events.events)
                await send_raw(conn, text)
                codes.append((await events.wait("error", after=n)).error.code)
            n = len(events.events)
            await conn._connection.send(b"\x00\x01")  # a binary frame
            codes.append((await events.wait("error", after=n)).error.code)
            n = len(events.events)
            await conn.session.update(session={"type": "realtime", "instructions": "Still here?"})
            updated = await events.wait("session.updated", after=n)
            return codes, updated

    codes, updated = asyncio.run(scenario())
    assert codes == [code for _, code in bad] + ["invalid_event"]
    assert updated.session.instructions == "Still here?"


def test_abrupt_disconnect_mid_response_frees_everything(rt_server):
    engine = FakeEngine(Script(tuple(f"Word {i}. " for i in range(300)), delay_s=0.02))
    rt_server.app.state.chat_engine = engine
    app = rt_server.app

    async def scenario():
        conn = await client_for(rt_server).realtime.connect(model="gpt-realtime").enter()
        events = Reader(conn)
        await events.wait("session.created")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await conn.response.create()
        await events.wait("response.output_audio.delta")
        conn._connection.transport.abort()  # no close frame: the peer just vanishes
        events.task.cancel()

    asyncio.run(scenario())
    from audio_server.routes_realtime import live_sessions

    deadline = time.time() + 10
    while time.time() < deadline and (live_sessions(app) or engine.open_streams):
        time.sleep(0.05)
    assert not live_sessions(app) and engine.open_streams == 0 and engine.closed_streams == 1

    async def task_names():
        return [t.get_name() for t in asyncio.all_tasks()]

    names = asyncio.run_coroutine_threadsafe(task_names(), app.state.realtime_loop).result(5)
    assert not [n for n in names if n.startswith("rt:")], names
    assert rt_server.gauge("voxline_sessions_active", kind="realtime") == 0


# ---- 5. G.711 round trips, both dialects -------------------------------------------------------------
@pytest.mark.parametrize("codec, dialect", [("pcmu", "beta"), ("pcma", "ga")])
def test_g711_round_trip(rt_server, hub, say, codec, dialect):
    rt_server.app.state.chat_engine = FakeEngine(Script(("The capital of France is Paris.",)))
    fmt, encode = (PCMU, ulaw_encode) if codec == "pcmu" else (PCMA, alaw_encode)
    question = encode(np.concatenate([say(QUESTION, 8000), np.zeros(8000, np.int16)]))

    async def scenario():
        client = client_for(rt_server)
        if dialect == "beta":
            manager = client.beta.realtime.connect(model="gpt-4o-realtime-preview")
            update = {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"}
        else:
            manager = client.realtime.connect(model="gpt-realtime")
            update = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcma"}},
                                                    "output": {"format": {"type": "audio/pcma"}}}}
        async with manager as conn:
            events = Reader(conn)
            created = await events.wait("session.created")
            await conn.session.update(session=update)
            updated = await events.wait("session.updated")
            await stream(conn, question, 8000, chunk_s=0.02, speed=0)  # 20 ms frames of 160 bytes
            done = await events.wait("response.done", timeout=60)
            return events, created, updated, done

    events, created, updated, done = asyncio.run(scenario())
    audio_type = "response.audio.delta" if dialect == "beta" else "response.output_audio.delta"
    if dialect == "beta":
        assert created.session.input_audio_format == "pcm16" and updated.session.output_audio_format == "g711_ulaw"
        assert "conversation.item.created" in events.types() and "conversation.item.added" not in events.types()
    else:
        assert updated.session.audio.output.format.type == "audio/pcma"
        assert "conversation.item.added" in events.types() and "response.audio.delta" not in events.types()
    transcript = events.of("conversation.item.input_audio_transcription.completed")[0].transcript
    assert "capital" in transcript.lower()
    wire = b"".join(base64.b64decode(d.delta) for d in events.of(audio_type))
    assert len(wire) / 8000 > 1.0  # one byte per 8 kHz sample
    heard = transcribe(hub, decode_bytes(fmt, wire), 8000)
    assert done.response.status == "completed" and "paris" in heard.lower()


# ---- API keys ------------------------------------------------------------------------------------------
def test_api_key_is_required_when_configured(hub):
    from dataclasses import replace

    from audio_server.app import create_app
    from audio_server.live import LiveServer

    app = create_app(replace(hub.settings, api_keys=("rt-secret",)), hub)
    app.state.chat_engine = FakeEngine()
    live = LiveServer(app).start()

    async def connect(key: str):
        client = openai.AsyncOpenAI(base_url=live.base_url + "/v1", websocket_base_url=live.ws_url + "/v1",
                                    api_key=key, max_retries=0)
        try:
            async with client.realtime.connect(model="gpt-realtime") as conn:
                return (await conn.recv()).type
        except Exception as exc:  # the handshake is refused with HTTP 403
            return type(exc).__name__

    try:
        assert asyncio.run(connect("rt-secret")) == "session.created"  # Authorization: Bearer rt-secret
        assert asyncio.run(connect("wrong")) != "session.created"
    finally:
        live.stop()
    assert live.gauge("voxline_ws_protocol_errors_total", kind="realtime", code="unauthorized") == 1
