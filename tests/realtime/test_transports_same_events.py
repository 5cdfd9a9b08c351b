"""One session host for every transport (issue 16, acceptance 1): the same scripted conversation — the user
speaks, is transcribed, the assistant answers, the user barges in, the assistant's item is truncated to what
was heard — through the Realtime WebSocket, a WebRTC call (mic track + `oai-events` channel) and a Twilio
media stream yields the same sequence of session-level events (the typed events the session emits, before
any wire's serializer).

Each transport runs through its real route in the app, in process, with the fakes of tests/realtime/fakes.py
(energy VAD, canned ASR, tone TTS, scripted LLM): no model is loaded. What differs between transports by
design is left out of the comparison: the set-up before the user speaks (a `session.update` on the
socket), the wire formats, and who asks for the truncation (the socket's client; the WebRTC and Twilio edges
themselves, from what their caller heard)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiortc import RTCSessionDescription
from starlette.testclient import TestClient

from audio_server.app import create_app
from audio_server.routes_realtime import live_sessions
from audio_server.settings import Settings
from realtime.audio import ulaw_encode
from realtime.events import (
    AudioDelta,
    InputTranscriptCompleted,
    ItemTruncated,
    ResponseDone,
    ServerEvent,
    SpeechStarted,
    TextDelta,
)
from realtime.host import RealtimeHost
from tests.realtime.fakes import FakeEngine, FakeModels, Script, silence, tone
from tests.webrtc.client import Client as WebRTCClient

ANSWER = Script(tuple(f"This is sentence number {i} of an answer that goes on for a while. " for i in range(8)))
TRANSCRIPTION = {"audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}}}
TIMEOUT_S = 60.0


@dataclass
class FakeHub(FakeModels):
    """The app's model hub, made of the fakes (the chat engine is the app's `chat_engine`)."""

    settings: Settings = field(default_factory=Settings)

    def llm(self, name=None):
        raise AssertionError("the test's chat engine is app.state.chat_engine")

    def close(self) -> None:
        pass


def make_app(engine: FakeEngine):
    # server_vad: the script's silences are timed to its 500 ms rule (the energy VAD's tones mean nothing to
    # semantic_vad's turn model); what is compared here is the transports, not the turn detection
    app = create_app(Settings(realtime_turn_detection="server_vad"), FakeHub())
    app.state.chat_engine = engine
    return app


def the_host(app, timeout: float = TIMEOUT_S) -> RealtimeHost:
    deadline = time.monotonic() + timeout
    while not live_sessions(app):
        assert time.monotonic() < deadline, "no session opened"
        time.sleep(0.01)
    (host,) = live_sessions(app).values()
    return host


def wait_for(events: list[ServerEvent], kind: type, timeout: float = TIMEOUT_S) -> ServerEvent:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in list(events) if isinstance(e, kind)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {kind.__name__}: {[e.type for e in events]}"
        time.sleep(0.01)


def turn(rate: int) -> np.ndarray:
    """The user's question: 0.8 s of 'speech' between silences (the last one ends the turn)."""
    return np.concatenate([silence(0.2, rate), tone(0.8, rate), silence(0.7, rate)])


# ---- the three transports ---------------------------------------------------------------------------------
def through_realtime_socket() -> list[ServerEvent]:
    app = make_app(FakeEngine(ANSWER))
    with TestClient(app) as http, http.websocket_connect("/v1/realtime?model=m") as ws:
        assert ws.receive_json()["type"] == "session.created"
        events: list[ServerEvent] = []
        the_host(app).observe(events.append)

        def until(kind: str) -> dict:
            while (msg := ws.receive_json())["type"] != kind:
                received.append(msg)
            return msg

        received: list[dict] = []
        ws.send_json({"type": "session.update", "session": TRANSCRIPTION})
        until("session.updated")

        def speak(pcm: np.ndarray) -> None:
            for i in range(0, len(pcm), 960):  # 40 ms appends
                ws.send_json({"type": "input_audio_buffer.append",
                              "audio": base64.b64encode(pcm[i:i + 960].astype("<i2").tobytes()).decode()})

        speak(turn(24000))
        until("response.output_audio.delta")
        speak(tone(0.4))  # barge-in
        done = until("response.done")["response"]
        heard_ms = sum(len(base64.b64decode(m["delta"])) for m in received
                       if m["type"] == "response.output_audio.delta") // 48  # pcm16 at 24 kHz: 48 bytes a ms
        ws.send_json({"type": "conversation.item.truncate", "item_id": done["output"][0]["id"], "content_index": 0,
                      "audio_end_ms": heard_ms})
        until("conversation.item.truncated")
    return events


def through_twilio() -> list[ServerEvent]:
    app = make_app(FakeEngine(ANSWER))
    sid = "MZtest"
    with TestClient(app) as http, http.websocket_connect("/twilio/media") as ws:
        ws.send_text(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        ws.send_text(json.dumps({"event": "start", "streamSid": sid, "start": {
            "streamSid": sid, "accountSid": "AC1", "callSid": "CA1", "tracks": ["inbound"], "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        events: list[ServerEvent] = []
        the_host(app).observe(events.append)  # before any media: the host exists once the start is verified

        def speak(pcm: np.ndarray) -> None:
            mulaw = ulaw_encode(pcm)
            for i in range(0, len(mulaw), 160):  # 20 ms media frames
                ws.send_text(json.dumps({"event": "media", "streamSid": sid, "media": {
                    "track": "inbound", "chunk": str(i // 160), "timestamp": str(i // 8),
                    "payload": base64.b64encode(mulaw[i:i + 160]).decode()}}))

        def until(kind: str) -> dict:
            while (frame := ws.receive_json())["event"] != kind:
                pass
            return frame

        speak(turn(8000))
        until("media")  # the answer is playing
        speak(tone(0.4, 8000))  # barge-in
        until("clear")
        wait_for(events, ItemTruncated)
        ws.send_text(json.dumps({"event": "stop", "streamSid": sid, "stop": {"callSid": "CA1"}}))
    return events


def through_webrtc() -> list[ServerEvent]:
    app = make_app(FakeEngine(ANSWER))

    async def call(http: TestClient) -> list[ServerEvent]:
        client = WebRTCClient()
        try:
            offer = {"sdp": await client.offer(), "type": "offer", "session": TRANSCRIPTION}
            answer = await asyncio.to_thread(http.post, "/v1/realtime/webrtc", json=offer)
            assert answer.status_code == 200, answer.text
            events: list[ServerEvent] = []
            the_host(app).observe(events.append)  # the call's mic track only plays what the test queues
            await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer.json()["sdp"], type="answer"))
            async with asyncio.timeout(TIMEOUT_S):
                await client.opened.wait()
                client.mic.play(turn(48000))
                await client.wait("output_audio_buffer.started", timeout=TIMEOUT_S)
                client.mic.play(tone(0.4, 48000))  # barge-in
                await client.wait("output_audio_buffer.cleared", timeout=TIMEOUT_S)
                await asyncio.to_thread(wait_for, events, ItemTruncated)
            return events
        finally:
            await client.close()

    with TestClient(app) as http:
        return asyncio.run(call(http))


# ---- the comparison ---------------------------------------------------------------------------------------
def conversation(events: list[ServerEvent]) -> list[tuple]:
    """From the user's first word to the truncation: each event's type, the items and responses it names (as
    the order they first appeared in: ids differ per run) and how a response ended. Audio and text deltas are
    left out (how many go out before the barge-in depends on timing); that there were some is checked."""
    start = next(i for i, e in enumerate(events) if isinstance(e, SpeechStarted))
    end = next(i for i, e in enumerate(events) if isinstance(e, ItemTruncated))
    names: dict[str, str] = {}

    def ref(value: str | None) -> str | None:
        return None if value is None else names.setdefault(value, f"#{len(names)}")

    out: list[tuple] = []
    for e in events[start:end + 1]:
        if isinstance(e, (AudioDelta, TextDelta)):
            continue
        item = e.data.get("item")
        item_id = getattr(e, "item_id", None) or e.data.get("item_id") or (item.id if item is not None else None)
        key: tuple = (e.type, ref(item_id), ref(e.response_id))
        if isinstance(e, ResponseDone):
            key += (e.status, e.reason)
        if isinstance(e, InputTranscriptCompleted):
            key += (e.transcript,)
        out.append(key)
    return out


@pytest.mark.timeout(240)  # a socket read that never returns must not hold the run for the default 15 min
def test_every_transport_yields_the_same_session_events():
    runs = {"realtime websocket": through_realtime_socket(), "twilio": through_twilio(), "webrtc": through_webrtc()}
    sequences = {name: conversation(events) for name, events in runs.items()}
    reference = sequences["realtime websocket"]
    for name, sequence in sequences.items():
        assert sequence == reference, f"{name} differs from the realtime websocket:\n{sequence}\n{reference}"
    for name, events in runs.items():
        barge_in = [i for i, e in enumerate(events) if isinstance(e, SpeechStarted)][1]
        assert any(isinstance(e, AudioDelta) for e in events[:barge_in]), f"{name}: no audio before the barge-in"
    types = [key[0] for key in reference]
    # the script happened: a transcribed turn, an answer cancelled by the barge-in, its item truncated
    assert ("conversation.item.input_audio_transcription.completed", "#0", None, "hello") in reference
    done = next(key for key in reference if key[0] == "response.done")
    assert done[3:] == ("cancelled", "turn_detected")
    assert types.index("response.created") < types.index("input_audio_buffer.speech_started", 1) < \
        types.index("response.done") < types.index("conversation.item.truncated")
    truncated, answer_item = reference[-1], next(key for key in reference if key[0] == "response.output_item.added")
    assert truncated[1] == answer_item[1]  # the answer's own item was cut to what was heard
