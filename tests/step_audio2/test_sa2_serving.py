"""Issue 17 acceptance 2: a tiny random checkpoint written in the official layout (shards + nested config + tokenizer
files + token2wav/ with flow.pt, hift.pt, flow.yaml, the S3 and CAM++ ONNX files) is served by
`--preset step-audio --checkpoint DIR` and answers, from the one loaded model, a realtime turn over `/v1/realtime`
with the openai SDK (audio in → audio out), a transcription and a speech request. Random weights: mechanics only."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io

import numpy as np
import openai
import pytest
import soundfile

from audio_server.settings import Settings
from realtime.unified_turn import pcm16_wire
from tests.pipeline.conftest import clip
from tests.pipeline.test_pl_websocket import Events, client_for
from tests.realtime.conftest import b64

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnx") is None,
                                reason="writing the tiny checkpoint's ONNX files needs the `onnx` test dependency")
SAMPLES_PER_CODE = 960  # 24 kHz: 2 mel frames of 480 samples per S3 code


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from runtime.step_audio2.tiny_checkpoint import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("step-audio-2-tiny"), seed=0)


@pytest.fixture(scope="module")
def server(checkpoint):
    from audio_server.app import create_app
    from audio_server.live import LiveServer
    from audio_server.models import ModelHub

    settings = Settings(preset="step-audio", checkpoint=str(checkpoint), max_ws_message_bytes=1024 * 1024,
                        step_audio_slots=4)
    assert settings.pipeline == "step-audio"
    hub = ModelHub(settings)
    stack = hub.step_audio2()
    stack.default_voice()
    live = LiveServer(create_app(settings, hub)).start()
    live.stack = stack
    yield live
    live.stop()
    stack.close()
    hub.close()


def test_the_checkpoint_is_the_official_layout(checkpoint):
    names = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert sum(n.startswith("model-0000") for n in names) > 1  # sharded
    assert {p.name for p in (checkpoint / "token2wav").iterdir()} >= {
        "flow.pt", "flow.yaml", "hift.pt", "campplus.onnx", "speech_tokenizer_v2_25hz.onnx"}


def test_realtime_turn_audio_in_audio_out_with_the_openai_sdk(server):
    steps0 = server.stack.loop.steps

    async def scenario():
        async with client_for(server).realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await events.wait("session.created")
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}},
                                               "max_output_tokens": 120})
            await events.wait("session.updated")
            wire = pcm16_wire(clip())
            for i in range(0, len(wire), 9600):
                await conn.input_audio_buffer.append(audio=b64(wire[i:i + 9600]))
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            done = await events.wait("response.done", timeout=120)
            return events, done

    events, done = asyncio.run(scenario())
    assert done.response.status in ("completed", "incomplete"), done.response
    wire = b"".join(base64.b64decode(d.delta) for d in events.of("response.output_audio.delta"))
    samples = len(wire) // 2
    assert samples > 0 and samples % SAMPLES_PER_CODE == 0  # every S3 code became 40 ms of 24 kHz audio
    assert 0 < done.response.usage.output_tokens <= 120
    assert events.of("response.output_audio_transcript.delta")  # the text side of the 1:4 interleave
    assert server.stack.loop.steps > steps0  # decoded by the stack's one stepping loop


def test_transcription_from_the_same_model(server):
    steps0 = server.stack.loop.steps
    buf = io.BytesIO()
    soundfile.write(buf, clip(), 16000, format="WAV")
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused-on-loopback", max_retries=0)
    out = client.audio.transcriptions.create(model="whisper-1", file=("turn.wav", buf.getvalue(), "audio/wav"))
    assert isinstance(out.text, str)
    assert server.stack.loop.steps > steps0  # the Step-Audio 2 LLM wrote it, not Whisper


def test_speech_from_the_same_model(server):
    steps0 = server.stack.loop.steps
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused-on-loopback", max_retries=0)
    wav = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format="wav").read()
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 24000 and len(audio) > 0 and len(audio) % SAMPLES_PER_CODE == 0
    assert np.abs(audio).max() > 0
    assert server.stack.loop.steps > steps0
