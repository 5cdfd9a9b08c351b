"""Tool calls and JSON output round-trip with the official `openai` SDK (issue 20, item 1), on a live server whose
chat model is the embedded default (Qwen2.5-Coder-0.5B) decoding under its grammar (runtime.llm.tool_constraint).

What a client may rely on, whatever a small model would rather write: with `tool_choice: "auto"` the answer is
a `tool_calls` entry whose arguments are JSON valid against the tool's schema, or plain text — never the call
written out as text; after the tool's result the next answer is text (no second call); `response_format`
json_object / json_schema give parseable JSON with no markdown fence. No test asserts exact model text."""

from __future__ import annotations

import json

import pytest

from tests.llm.tool_engine import WEATHER_SCHEMA, constrained_engine, looks_like_call_text, matches_weather_schema

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city",
                                            "parameters": WEATHER_SCHEMA}}
QUESTIONS = ("What's the weather in Paris?", "Is it raining in Tokyo right now?", "Tell me a joke.")
RESULT = json.dumps({"temperature_c": 18, "sky": "sunny"})


@pytest.fixture(scope="module")
def client():
    import openai

    from audio_server.app import create_app
    from audio_server.live import LiveServer
    from audio_server.models import ModelHub
    from audio_server.settings import Settings

    engine = constrained_engine()
    hub = ModelHub(Settings())
    app = create_app(hub.settings, hub)
    app.state.chat_engines = lambda name=None: engine
    live = LiveServer(app).start()
    yield openai.OpenAI(base_url=live.base_url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=300)
    live.stop()
    hub.close()


def test_auto_gives_a_valid_call_or_text_and_the_result_is_answered_in_text(client):
    calls_made = 0
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        r = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER],
                                           tool_choice="auto", temperature=0, max_tokens=80)
        choice = r.choices[0]
        if not choice.message.tool_calls:
            assert choice.finish_reason == "stop" and choice.message.content
            assert not looks_like_call_text(choice.message.content), choice.message.content
            continue
        calls_made += 1
        assert choice.finish_reason == "tool_calls" and not (choice.message.content or "").strip()
        for call in choice.message.tool_calls:
            assert call.function.name == "get_weather" and matches_weather_schema(call.function.arguments), call
        follow = client.chat.completions.create(
            model="gpt-4o-mini", tools=[WEATHER], temperature=0, max_tokens=80,
            messages=messages + [choice.message.model_dump(exclude_none=True)]
            + [{"role": "tool", "tool_call_id": c.id, "content": RESULT} for c in choice.message.tool_calls])
        answer = follow.choices[0]
        print(f"\n{question!r} -> {[c.function.arguments for c in choice.message.tool_calls]} -> {answer.message.content!r}")
        assert not answer.message.tool_calls and answer.finish_reason == "stop"
        assert answer.message.content and not looks_like_call_text(answer.message.content), answer.message.content
    assert calls_made >= 1, "no question about the weather got a call: the round trip was not exercised"


def test_streamed_auto_call_arrives_whole(client):
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTIONS[0]}], tools=[WEATHER],
        temperature=0, max_tokens=80, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls or text
    if calls:
        assert all(tc.function.name == "get_weather" and matches_weather_schema(tc.function.arguments) for tc in calls)
        assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "tool_calls"
    assert not looks_like_call_text(text), text


def test_json_object_is_bare_parseable_json(client):
    r = client.chat.completions.create(
        model="gpt-4o-mini", temperature=0, max_tokens=80, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe a cat as a JSON object with its name and age."}])
    content = r.choices[0].message.content
    assert "```" not in content and isinstance(json.loads(content), dict), content


def test_json_schema_output_matches_the_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="gpt-4o-mini", temperature=0, max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": schema, "strict": True}},
        messages=[{"role": "user", "content": "Invent a cat."}])
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"name", "age"} and isinstance(obj["name"], str) and isinstance(obj["age"], int)
