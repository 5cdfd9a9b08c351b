"""openai-agents' realtime agent (`agents.realtime`) against our `/v1/realtime`, through one tool round trip to a
spoken answer (issue 20, item 1), with the embedded default model decoding under its grammar.

Before the constraint the same agent called `get_weather("Paris")` five times and never answered; here the tool
runs once with schema-valid arguments and the answer that follows is audio (Piper) whose transcript is not a
call written out. The model's wording is not asserted."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.llm.tool_engine import constrained_engine, looks_like_call_text

pytest.importorskip("agents.realtime", reason="openai-agents is not installed")


@pytest.fixture(scope="module")
def agents_server(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    engine = constrained_engine()
    app = create_app(hub.settings, hub)
    app.state.chat_engine = engine          # every realtime session's LLM
    live = LiveServer(app).start()
    yield live
    live.stop()


def test_realtime_agent_tool_round_trip_ends_in_a_spoken_answer(agents_server, hub):
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        cities.append(city)
        return json.dumps({"city": city, "temperature_c": 18, "sky": "sunny"})

    agent = RealtimeAgent(name="Assistant", instructions="You are a helpful voice assistant. Answer briefly.",
                          tools=[get_weather])
    runner = RealtimeRunner(agent, config={"model_settings": {"modalities": ["audio"], "turn_detection": None}})
    url = agents_server.base_url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime"

    async def scenario():
        audio, ends, errors, transcripts = bytearray(), [], [], []
        async with await runner.run(model_config={"url": url, "api_key": "unused-on-loopback"}) as session:
            await session.send_message("What's the weather in Paris?")
            async for ev in session:
                if ev.type == "audio" and ends:
                    audio += ev.audio.data
                elif ev.type == "tool_end":
                    ends.append(ev)
                elif ev.type == "error":
                    errors.append(ev.error)
                elif ev.type == "raw_model_event" and ev.data.type == "turn_ended" and ends and audio:
                    # the answer's turn: the call's own turn can end after the tool has already run
                    break
                elif ev.type == "history_updated":
                    transcripts[:] = [c.transcript or getattr(c, "text", "") or ""
                                      for item in ev.history if getattr(item, "role", None) == "assistant"
                                      for c in getattr(item, "content", [])]
            return audio, ends, errors, transcripts

    audio, ends, errors, transcripts = asyncio.run(asyncio.wait_for(scenario(), timeout=600))
    print(f"\ntool called with {cities}; assistant said {transcripts!r}; {len(audio) / 48000:.2f} s of audio")
    assert not errors, errors
    assert len(cities) == 1 and "paris" in cities[0].lower()
    assert len(ends) == 1
    assert transcripts and transcripts[-1].strip() and not looks_like_call_text(transcripts[-1])
    pcm = np.frombuffer(bytes(audio), "<i2").astype(np.float32) / 32768
    assert pcm.size > 24000 * 0.5 and np.abs(pcm).max() > 0.01    # at least half a second of real speech
