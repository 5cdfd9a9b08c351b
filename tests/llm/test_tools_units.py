"""The output constraint of tool calls and JSON (runtime.llm.tool_constraint) without running a model: which
language each request gets, what the prompt shows, what the grammar accepts (checked token by token with
llguidance, the library both engines decode with), and the parser around it."""

from __future__ import annotations

import pytest

from runtime.chat_api import ChatMessage, ChatRequest, ToolCall, ToolSpec
from runtime.llm.output import OutputParser
from runtime.llm.tool_constraint import OutputConstraint, call_schema, constraint_for
from tests.llm.conftest import SMALL
from tests.llm.tool_engine import WEATHER_SCHEMA

WEATHER = ToolSpec("get_weather", "Get the current weather for a city", WEATHER_SCHEMA)
TIME = ToolSpec("get_time", "Get the local time in a city", WEATHER_SCHEMA)
ASK = ChatMessage("user", "What's the weather in Paris?")
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
ANSWERED = (ASK, ChatMessage("assistant", "", (CALL,)), ChatMessage("tool", "18C, sunny", tool_call_id="call_1"))


def test_each_request_gets_its_language():
    assert constraint_for((ASK,), (WEATHER, TIME), "auto", None).kind == "tools"
    assert constraint_for(ANSWERED, (WEATHER, TIME), "auto", None).kind == "text"      # answer from the result
    assert constraint_for(ANSWERED, (WEATHER,), "required", None).kind == "call"       # forced stays forced
    assert constraint_for((ASK,), (), "none", {"type": "object"}) == OutputConstraint("json", {"type": "object"})
    assert constraint_for((ASK,), (), "none", None) is None
    one = call_schema((WEATHER,))
    assert one["properties"]["name"] == {"const": "get_weather"}
    assert one["properties"]["arguments"]["additionalProperties"] is False         # no invented keys
    assert len(call_schema((WEATHER, TIME))["anyOf"]) == 2


@pytest.fixture(scope="module")
def tokenizer():
    from runtime.llm.loader import gguf_tokenizer

    return gguf_tokenizer(SMALL)


def test_prompts_under_a_constraint(tokenizer):
    from runtime.llm.chat_format import chat_format
    from runtime.llm.prompt import build_prompt

    fmt = chat_format("smollm2", tokenizer)

    def prompt(messages, choice="auto"):
        ids, parser, _ = build_prompt(ChatRequest(messages=messages, tools=(WEATHER,), tool_choice=choice), fmt,
                                      tokenizer, SMALL, max_prompt_tokens=2000, constrain=True)
        return tokenizer.decode(ids), parser

    text, parser = prompt((ASK,))
    assert "# Tools" in text and parser.constraint.kind == "tools"
    text, parser = prompt(ANSWERED)
    assert "# Tools" not in text and "<tool_response>\n18C, sunny\n</tool_response>" in text
    assert parser.constraint.kind == "text"
    text, parser = prompt((ASK,), "get_weather")
    assert text.endswith("assistant\n<tool_call>\n") and parser.constraint.kind == "call"


def _accepts(tokenizer, constraint: OutputConstraint, text: str) -> bool:
    llguidance = pytest.importorskip("llguidance")
    lltok = llguidance.LLTokenizer(tokenizer.tok.to_str(), n_vocab=tokenizer.vocab_size,
                                   eos_token=list(tokenizer.stop_ids))
    matcher = llguidance.LLMatcher(lltok, constraint.lark(), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(tokenizer.encode(text)) and matcher.is_accepting()


@pytest.mark.parametrize("text, ok", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', True),
    ('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', True),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', True),
    ("Let me check.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>", True),
    ("It is sunny in Paris today.", True),
    ('{"name": "get_weather", "arguments": {"town": "Paris"}}', False),          # not the schema
    ('{"name": "get_weather", "arguments": {"city": "Paris"}', False),           # a brace missing
    ('{"name": "get_news", "arguments": {}}', False),                             # no such tool
    ('({"name": "get_weather", "arguments": {"city": "Paris"}})', False),        # a call written as text
    ('Sure: {"name": "get_weather"}', False),
])
def test_tools_grammar(tokenizer, text, ok):
    assert _accepts(tokenizer, constraint_for((ASK,), (WEATHER, TIME), "auto", None), text) is ok


def test_text_call_and_json_grammars(tokenizer):
    text = constraint_for(ANSWERED, (WEATHER,), "auto", None)
    assert _accepts(tokenizer, text, "It is 18 degrees and sunny in Paris.")
    assert not _accepts(tokenizer, text, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}')
    forced = constraint_for((ASK,), (WEATHER,), "required", None)
    assert _accepts(tokenizer, forced, '{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert not _accepts(tokenizer, forced, "Paris")
    json_object = constraint_for((ASK,), (), "none", {"type": "object"})
    assert _accepts(tokenizer, json_object, '{"name": "Tom", "age": 3}')
    assert not _accepts(tokenizer, json_object, '```json\n{"name": "Tom"}\n```')


def _run(parser: OutputParser, pieces):
    text, calls = "", []
    for p in pieces:
        out = parser.feed(p)
        text, calls = text + out.text, calls + out.calls
        if out.done:                    # the engine stops feeding here
            break
    end = parser.finish()
    return text + end.text, calls + end.calls


def test_a_fenced_call_hides_its_closing_fence():
    text, calls = _run(OutputParser(tools=(WEATHER,), parse_tools=True),
                       ["```json\n", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "\n`", "``"])
    assert text == "" and [c.name for c in calls] == ["get_weather"]


def test_unconstrained_json_loses_its_fence():
    parser = OutputParser()
    parser.unfence = True
    text, _ = _run(parser, ["``", '`json\n{"a": ', "1}\n```", "\nmore"])
    assert text.strip() == '{"a": 1}'
