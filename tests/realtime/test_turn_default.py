"""The served default turn detection: semantic_vad, the audio and the words deciding together.

Other realtime tests pin `server_vad` (tests/conftest.py: they test protocol mechanics with silences of known
length). Here a server runs on the default, with the real chat engine judging the words: a question spoken in
two halves with a 700 ms pause — longer than server_vad's 500 ms — is one turn and one answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from audio_server.routes_realtime import new_session_config
from audio_server.routes_twilio_media import session_config
from audio_server.settings import Settings
from tests.realtime.conftest import pcm_bytes, stream
from tests.realtime.test_realtime_ws import Reader, client_for

pytestmark = pytest.mark.slow


def test_every_transport_starts_on_semantic_vad_by_default():
    settings = Settings()
    assert settings.realtime_turn_detection == "semantic_vad"
    td = new_session_config(settings, "gpt-realtime").turn_detection
    assert td is not None and (td.type, td.eagerness) == ("semantic_vad", "auto")
    call = session_config({}, new_session_config(settings, "voxline-realtime"))  # Twilio's, on top of it
    assert call.turn_detection == td and call.input_format.codec == "pcmu"
    server_vad = new_session_config(replace(settings, realtime_turn_detection="server_vad"), "m").turn_detection
    assert server_vad is not None and server_vad.type == "server_vad"
    with pytest.raises(ValueError):
        replace(settings, realtime_turn_detection="push_to_talk")


@pytest.fixture(scope="module")
def semantic_server(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    app = create_app(replace(hub.settings, realtime_turn_detection="semantic_vad"), hub)
    hub.load_all()
    live = LiveServer(app).start()
    yield live
    live.stop()


def test_a_pause_inside_a_question_does_not_end_the_turn(semantic_server, real_engine, say):
    semantic_server.app.state.chat_engine = None  # the session gets the LLM (and its verdicts) through the app
    pause = np.zeros(int(0.7 * 24000), np.int16)
    audio = np.concatenate([np.zeros(4800, np.int16), say("Can you tell me"), pause, say("what bees make?"),
                            np.zeros(36000, np.int16)])

    async def scenario():
        async with client_for(semantic_server).realtime.connect(model="gpt-realtime") as conn:
            events = Reader(conn)
            created = await events.wait("session.created")
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                               "max_output_tokens": 40})
            await events.wait("session.updated")
            await stream(conn, pcm_bytes(audio), 48000, speed=1.0)  # real time, as a microphone sends it
            await events.wait("response.done", timeout=120)
            await asyncio.sleep(0.5)  # anything a second (cut-off) turn would still send
            return created, events

    created, events = asyncio.run(scenario())
    td = created.session.audio.input.turn_detection
    assert td.type == "semantic_vad"
    transcripts = [e.transcript for e in events.of("conversation.item.input_audio_transcription.completed")]
    print(f"\nturns heard: {transcripts}")
    assert len(events.of("input_audio_buffer.committed")) == 1, transcripts  # one turn, not two halves
    assert len(events.of("response.created")) == 1
    heard = transcripts[0].lower()
    assert "tell me" in heard and "make" in heard
