"""Whether a tool is called at all under `tool_choice: "auto"` (runtime.llm.tool_constraint.CallGate), and how the
turn after its result is answered, on the embedded default model (Qwen2.5-Coder-0.5B GGUF on llama.cpp, greedy).

The questions are not bench/llm_eval.py's (that eval measures the same behaviour; these only check the mechanism):
one whose call the model is sure of, one it would call get_weather for with a made-up city, and a result turn."""

from __future__ import annotations

import asyncio
import json

from runtime.chat_api import ChatMessage, ChatRequest, ToolCall, ToolSpec
from tests.llm.tool_engine import WEATHER_SCHEMA, constrained_engine

WEATHER = ToolSpec("get_weather", "Get the current weather for a city", WEATHER_SCHEMA)
TIMER = ToolSpec("set_timer", "Start a countdown timer",
                 {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]})
SYSTEM = ChatMessage("system", "You are a helpful voice assistant. Answer in one or two short spoken sentences.")


def _ask(engine, messages):
    async def run():
        text, calls, finish = "", [], None
        async for d in engine.stream(ChatRequest(messages=tuple(messages), tools=(WEATHER, TIMER), tool_choice="auto",
                                                 temperature=0.0, max_tokens=48)):
            text += d.text
            calls += [d.tool_call] if d.tool_call else []
            finish = d.finish_reason or finish
        return text, calls, finish
    return asyncio.run(run())


def test_a_sure_call_is_made_and_a_guessed_one_is_answered_in_text():
    engine = constrained_engine()
    refused = engine.stats["refused_calls"]
    text, calls, finish = _ask(engine, [SYSTEM, ChatMessage("user", "What's the weather in Berlin?")])
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Berlin"})]
    assert finish == "tool_calls" and engine.stats["refused_calls"] == refused
    # Ungated, the model calls get_weather(city="New York") here (its confidence in that call: 0.26).
    text, calls, finish = _ask(engine, [SYSTEM, ChatMessage("user", "Tell me something about cats.")])
    assert not calls and finish == "stop" and text.strip()
    assert engine.stats["refused_calls"] == refused + 1
    assert not any(c in text for c in "{}<`"), text


def test_the_result_turn_answers_from_the_result():
    engine = constrained_engine()
    call = ToolCall("call_1", "set_timer", '{"minutes": 3}')
    messages = [SYSTEM, ChatMessage("user", "Set a timer for three minutes."), ChatMessage("assistant", "", (call,)),
                ChatMessage("tool", json.dumps({"ok": True, "minutes": 3}), tool_call_id="call_1")]
    text, calls, finish = _ask(engine, messages)
    # Before the tool list was kept in this turn's prompt, this answer was "I'm sorry, but I can't assist with that."
    assert not calls and finish == "stop"
    assert "3" in text or "three" in text.lower(), text
    assert "sorry" not in text.lower(), text
