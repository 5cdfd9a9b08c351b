"""A realtime voice turn whose LLM is the vLLM engine: speech in (embedded VAD and ASR), vLLM's answer, speech
out (Piper), over `/v1/realtime` with the official `openai` SDK. The model's words are not asserted (a 135M
model on another CPU may phrase its answer differently); that vLLM answered, and the turn's shape, are."""

from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest

from realtime.audio import StreamResampler
from tests.realtime.conftest import pcm_bytes, stream
from tests.realtime.test_realtime_ws import Reader, pcm16_audio, transcribe
from tests.vllm.conftest import SMALL

pytestmark = pytest.mark.slow


def test_spoken_question_is_answered_by_vllm(vllm_server, vllm_engine, hub):
    tts = hub.tts()
    said = StreamResampler(tts.sample_rate, 24000, dtype="int16")(tts.synthesize_all("What is the capital of France?"),
                                                                  last=True)
    question = pcm_bytes(np.concatenate([np.zeros(4800, np.int16), said, np.zeros(24000, np.int16)]))
    client = openai.AsyncOpenAI(base_url=vllm_server.base_url + "/v1", websocket_base_url=vllm_server.ws_url + "/v1",
                                api_key="unused-on-loopback", max_retries=0)
    steps = vllm_engine.stats["steps"]

    async def scenario():
        async with client.realtime.connect(model=SMALL) as conn:       # the session's LLM: SMALL, i.e. vLLM
            events = Reader(conn)
            await events.wait("session.created")
            await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"],
                                               "max_output_tokens": 40})
            await events.wait("session.updated")
            await stream(conn, question, 48000, speed=1.0)   # real time, as a microphone sends it
            return events, await events.wait("response.done", timeout=300)

    events, done = asyncio.run(scenario())
    transcript = events.of("conversation.item.input_audio_transcription.completed")[0].transcript
    assert "capital" in transcript.lower() and "france" in transcript.lower()
    assert done.response.status == "completed", done.response
    text = "".join(d.delta for d in events.of("response.output_audio_transcript.delta"))
    audio = pcm16_audio(events.of("response.output_audio.delta"))
    print(f"\nquestion heard as {transcript!r}; vLLM's answer {text!r}")
    assert text.strip() and len(audio) > 24000 * 0.3                 # an answer, spoken
    assert transcribe(hub, audio, 24000).strip()                     # ... as speech the ASR hears words in
    assert vllm_engine.stats["steps"] > steps                        # decoded by the vLLM engine
    order = events.types()
    assert order.index("input_audio_buffer.speech_started") < order.index("input_audio_buffer.committed") \
        < order.index("response.created") < order.index("response.output_audio.delta") < order.index("response.done")
