"""The torch engine decodes tool calls and JSON under the same grammar as llama.cpp (runtime.llm.tool_masks), on
the packaged SmolLM2-135M: a 135M model follows no tool protocol by itself, so whatever it answers here is the
constraint's doing. No exact model text is asserted."""

from __future__ import annotations

import asyncio
import json

import pytest

from runtime.chat_api import ChatMessage, ChatRequest, ToolCall, ToolSpec
from tests.llm.conftest import SMALL
from tests.llm.tool_engine import WEATHER_SCHEMA, looks_like_call_text, matches_weather_schema

pytest.importorskip("llguidance")

WEATHER = ToolSpec("get_weather", "Get the current weather for a city", WEATHER_SCHEMA)


@pytest.fixture(scope="module")
def engine():
    from runtime.llm.loader import load_torch_engine
    from runtime.llm.torch_engine import EngineOptions

    eng = load_torch_engine(SMALL, EngineOptions(slots=2, capacity=1024))
    assert eng.constrains_output
    yield eng
    eng.close()


def run(engine, messages, **kw):
    async def go():
        return [d async for d in engine.stream(ChatRequest(messages=tuple(messages), **{"temperature": 0.0,
                                                                                          "max_tokens": 60, **kw}))]
    deltas = asyncio.run(go())
    return "".join(d.text for d in deltas), [d.tool_call for d in deltas if d.tool_call], deltas[-1].finish_reason


def test_calls_and_answers_under_the_grammar(engine):
    ask = ChatMessage("user", "What's the weather in Paris?")
    for choice in ("auto", "required"):
        text, calls, finish = run(engine, [ask], tools=(WEATHER,), tool_choice=choice)
        assert all(c.name == "get_weather" and matches_weather_schema(c.arguments) for c in calls)
        assert (calls and finish == "tool_calls") or (choice == "auto" and text and not looks_like_call_text(text))
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    text, calls, finish = run(engine, [ask, ChatMessage("assistant", "", (call,)),
                                       ChatMessage("tool", '{"temperature_c": 18}', tool_call_id="call_1")],
                              tools=(WEATHER,))
    assert not calls and finish == "stop" and text and not looks_like_call_text(text)


def test_json_sampled_or_greedy_is_json(engine):
    cat = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
           "required": ["name", "age"], "additionalProperties": False}
    for schema, temperature in (({"type": "object"}, 0.0), (cat, 1.0)):
        text, _, finish = run(engine, [ChatMessage("user", "Describe a cat as JSON.")], json_schema=schema,
                              temperature=temperature, seed=7, max_tokens=200)
        assert finish == "stop" and isinstance(json.loads(text), dict), text
        if schema is cat:
            obj = json.loads(text)
            assert set(obj) == {"name", "age"} and isinstance(obj["age"], int) and len(obj["name"]) <= 20
