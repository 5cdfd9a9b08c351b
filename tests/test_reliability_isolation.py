"""A session that dies never takes another with it (DESIGN.md §7: "a crash in one session never ends
another").

Two sessions on one live server with the embedded VAD, ASR and TTS: session A is talking (a long scripted
answer) when its client vanishes without a close frame — or, separately, when its response task or its
whole connection task is cancelled on the server. Session B, speaking at the same time in real time, gets
its transcript and a completed `response.done`, and the server's live-session count comes back to the
right number with no task of A left behind. The same for two `/v1/asr/stream` sockets and two Twilio calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace

import numpy as np
import pytest
import websockets

from audio_server.routes_realtime import live_sessions
from realtime.audio import ulaw_encode
from tests.conftest import DATA, read_audio
from tests.realtime.conftest import say  # noqa: F401  (fixture)
from tests.test_reliability_support import (
    STORY,
    ByInstructions,
    RawClient,
    Script,
    append,
    on_server_loop,
    session_tasks,
    wait_until,
)

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def live(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    hub.load_all()
    server = LiveServer(create_app(replace(hub.settings, max_ws_message_bytes=1024 * 1024), hub)).start()
    yield server
    server.stop()


@pytest.fixture
def engine(live):
    engine = ByInstructions({"A": Script(STORY, delay_s=0.05), "B": Script((ANSWER,))})
    live.app.state.chat_engine = engine
    yield engine
    live.app.state.chat_engine = None


def settled(live, engine, sessions: int = 0) -> None:
    """The server is back to `sessions` open sessions, with nothing of the others left running."""
    app = live.app
    wait_until(lambda: len(live_sessions(app)) == sessions and app.state.open_sessions == sessions
               and engine.open_streams == 0, 15, f"{sessions} open session(s)")
    if sessions == 0:
        assert not session_tasks(live)
        assert live.gauge("voxline_sessions_active", kind="realtime") == 0


async def open_pair(live) -> tuple[RawClient, RawClient, str]:
    """A (no VAD, instructions "A": the long answer) and B (server VAD, instructions "B"). Returns A's id."""
    url = live.ws_url + "/v1/realtime"
    a = await RawClient.connect(url)
    b = await RawClient.connect(url)
    created = await a.wait("session.created")
    await b.wait("session.created")
    await a.send({"type": "session.update", "session": {"type": "realtime", "instructions": "A",
                                                          "audio": {"input": {"turn_detection": None}}}})
    await b.send({"type": "session.update", "session": {"type": "realtime", "instructions": "B"}})
    await a.wait("session.updated")
    await b.wait("session.updated")
    return a, b, created["session"]["id"]


async def a_starts_talking(a: RawClient) -> dict:
    await a.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Tell me a long story."}]}})
    await a.send({"type": "response.create"})
    await a.wait("response.output_audio.delta")
    return await a.wait("response.created")


async def b_asks(b: RawClient, speech: np.ndarray) -> tuple[dict, dict]:
    """B speaks its question in real time (20 ms appends), then waits for its transcript and answer."""
    n = len(b.events)
    wire = np.concatenate([np.zeros(4800, np.int16), speech, np.zeros(24000, np.int16)])
    t0 = asyncio.get_running_loop().time()
    for i, start in enumerate(range(0, len(wire), 480)):
        await b.send(append(wire[start:start + 480]))
        await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - asyncio.get_running_loop().time()))
    transcript = await b.wait("conversation.item.input_audio_transcription.completed", after=n, timeout=60)
    done = await b.wait("response.done", after=n, timeout=60)
    return transcript, done


def check_b(b: RawClient, transcript: dict, done: dict) -> None:
    assert "capital" in transcript["transcript"].lower(), transcript
    assert done["response"]["status"] == "completed", done["response"]
    rid = done["response"]["id"]
    assert [e for e in b.of("response.output_audio.delta") if e["response_id"] == rid]
    text = "".join(e["delta"] for e in b.of("response.output_audio_transcript.delta") if e["response_id"] == rid)
    assert text == ANSWER


def test_a_client_vanishing_mid_response_does_not_touch_the_other_session(live, engine, say):  # noqa: F811
    speech = say(QUESTION)

    async def scenario():
        a, b, _ = await open_pair(live)
        await a_starts_talking(a)
        asking = asyncio.create_task(b_asks(b, speech))
        await asyncio.sleep(0.5)  # both sessions busy: A talking, B speaking
        a.abort()  # no close frame: the peer just vanishes, mid-response
        transcript, done = await asking
        await asyncio.to_thread(settled, live, engine, 1)  # A is gone; B is still open
        await b.ws.close()
        return b, transcript, done

    b, transcript, done = asyncio.run(scenario())
    check_b(b, transcript, done)
    settled(live, engine, 0)
    assert engine.closed_streams == 2  # A's stream was closed when A vanished, B's when it finished


def test_a_response_task_cancelled_on_the_server_ends_that_response_only(live, engine, say):  # noqa: F811
    """A's response task is cancelled from outside (not by a protocol event): A still gets `response.done`
    (cancelled) and can ask again; B is untouched."""
    speech = say(QUESTION)
    app = live.app

    async def scenario():
        a, b, a_id = await open_pair(live)
        created = await a_starts_talking(a)
        asking = asyncio.create_task(b_asks(b, speech))
        await asyncio.sleep(0.5)
        runner = live_sessions(app)[a_id].runner
        await asyncio.to_thread(on_server_loop, live, lambda: runner.responses[created["response"]["id"]].cancel())
        a_done = await a.wait("response.done")
        transcript, done = await asking
        n = len(a.events)
        engine.by_instructions["A"] = Script(("Short this time.",))
        await a.send({"type": "response.create"})
        a_again = await a.wait("response.done", after=n)
        await a.ws.close()
        await b.ws.close()
        return a_done, a_again, b, transcript, done

    a_done, a_again, b, transcript, done = asyncio.run(scenario())
    assert a_done["response"]["status"] == "cancelled"
    assert a_again["response"]["status"] == "completed"
    check_b(b, transcript, done)
    settled(live, engine, 0)


def test_a_connection_task_cancelled_on_the_server_closes_that_session_only(live, engine, say):  # noqa: F811
    speech = say(QUESTION)
    app = live.app

    async def scenario():
        a, b, _ = await open_pair(live)
        a_sock = next(iter(app.state.registry.sessions.values()))  # A connected first
        await a_starts_talking(a)
        asking = asyncio.create_task(b_asks(b, speech))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(on_server_loop, live, a_sock.task.cancel)
        a_close = await a.closed(10)
        transcript, done = await asking
        await asyncio.to_thread(settled, live, engine, 1)
        await b.ws.close()
        return a_close, b, transcript, done

    a_close, b, transcript, done = asyncio.run(scenario())
    assert a_close[0] == 1011, a_close
    check_b(b, transcript, done)
    settled(live, engine, 0)


# ---- the other socket kinds --------------------------------------------------------------------------------
def test_asr_stream_vanishing_mid_utterance_does_not_touch_the_other_stream(live):
    audio, rate = read_audio(DATA / "commands" / "goforward.wav")
    pcm = (np.clip(np.concatenate([np.zeros(4800, np.float32), audio, np.zeros(16000, np.float32)]), -1, 1)
           * 32767).astype("<i2")
    url = live.ws_url + "/v1/asr/stream?sample_rate=16000"

    async def scenario():
        a, b = await RawClient.connect(url), await RawClient.connect(url)
        await a.wait("ready")
        await b.wait("ready")
        t0 = asyncio.get_running_loop().time()
        for i, start in enumerate(range(0, len(pcm), 320)):
            if i == 60:  # 1.2 s in, A is mid-utterance: it vanishes
                a.abort()
            if i < 60:
                await a.ws.send(pcm[start:start + 320].tobytes())
            await b.ws.send(pcm[start:start + 320].tobytes())
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - asyncio.get_running_loop().time()))
        await asyncio.to_thread(wait_until, lambda: live.app.state.open_sessions == 1, 15, "A's cleanup")
        await b.send({"type": "end"})  # B, still open, finishes normally (the server then closes it)
        await b.wait("done", timeout=60)
        return b

    b = asyncio.run(scenario())
    finals = " ".join(e["text"] for e in b.of("final")).lower()
    assert "forward" in finals and "meters" in finals.replace("metres", "meters"), finals
    wait_until(lambda: live.app.state.open_sessions == 0, 15, "every slot freed")
    assert live.gauge("voxline_sessions_active", kind="asr") == 0


def test_twilio_call_vanishing_mid_answer_does_not_touch_the_other_call(live, engine, say):  # noqa: F811
    engine.default = Script(STORY, delay_s=0.05)  # the first call to ask gets the long story...
    question = ulaw_encode(say(QUESTION, 8000))
    calls = iter(("CA_A", "CA_B"))

    async def call(sid: str) -> tuple[websockets.ClientConnection, list[dict]]:
        ws = await websockets.connect(live.ws_url + "/twilio/media", max_size=None)
        frames: list[dict] = []

        async def read():
            try:
                async for m in ws:
                    frames.append(json.loads(m))
            except websockets.ConnectionClosed:
                pass

        asyncio.create_task(read())
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "streamSid": sid, "start": {
            "streamSid": sid, "callSid": next(calls), "accountSid": "AC1", "tracks": ["inbound"],
            "customParameters": {"instructions": "A" if sid == "MZA" else "B"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        return ws, frames

    async def speak(ws, sid: str, mulaw: bytes) -> None:
        t0 = asyncio.get_running_loop().time()
        for i, start in enumerate(range(0, len(mulaw), 160)):
            payload = base64.b64encode(mulaw[start:start + 160].ljust(160, b"\xff")).decode()
            await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {
                "track": "inbound", "chunk": str(i + 1), "timestamp": str(i * 20), "payload": payload}}))
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - asyncio.get_running_loop().time()))

    async def scenario():
        a, a_frames = await call("MZA")
        b, b_frames = await call("MZB")
        silence = b"\xff" * 8000
        await speak(a, "MZA", silence[:2400] + question + silence)
        for _ in range(300):  # A's answer (the story) is playing
            if any(f["event"] == "media" for f in a_frames):
                break
            await asyncio.sleep(0.05)
        asking = asyncio.create_task(speak(b, "MZB", silence[:2400] + question + silence))
        await asyncio.sleep(0.5)
        a.transport.abort()
        await asking
        for _ in range(600):
            if any(f["event"] == "mark" for f in b_frames):
                break
            await asyncio.sleep(0.05)
        await b.close()
        return a_frames, b_frames

    engine.by_instructions = {"B": Script((ANSWER,))}
    a_frames, b_frames = asyncio.run(scenario())
    assert any(f["event"] == "media" for f in a_frames)  # A was mid-answer when it vanished
    assert any(f["event"] == "mark" for f in b_frames), [f["event"] for f in b_frames][-10:]
    assert sum(f["event"] == "media" for f in b_frames) > 50  # B heard a whole answer (> 1 s)
    settled(live, engine, 0)
