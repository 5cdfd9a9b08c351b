"""The output constraint of tool calls and JSON (runtime.llm.tool_constraint) without running a model: which
language each request gets, what the prompt shows, what the grammar accepts (checked token by token with
llguidance, the library both engines decode with), and the parser around it."""

from __future__ import annotations

import pytest

from runtime.chat_api import ChatMessage, ChatRequest, ToolCall, ToolSpec
from runtime.llm.output import OutputParser
from runtime.llm.tool_constraint import CallGate, OutputConstraint, call_schema, constraint_for
from tests.llm.conftest import DEFAULT, SMALL
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
    from runtime.llm.chat_format import TOOL_RESULT_NOTE, chat_format
    from runtime.llm.prompt import build_prompt

    fmt = chat_format("smollm2", tokenizer)

    def prompt(messages, choice="auto"):
        ids, parser, _ = build_prompt(ChatRequest(messages=messages, tools=(WEATHER,), tool_choice=choice), fmt,
                                      tokenizer, SMALL, max_prompt_tokens=2000, constrain=True)
        return tokenizer.decode(ids), parser

    text, parser = prompt((ASK,))
    assert "# Tools" in text and parser.constraint.kind == "tools"
    text, parser = prompt(ANSWERED)
    # the result turn still lists the tools (the template's shape) and ends with the note on using the result
    assert "# Tools" in text and "<tool_response>\n18C, sunny\n</tool_response>" in text
    assert TOOL_RESULT_NOTE in text and parser.constraint.kind == "text"
    text, parser = prompt((ASK,), "get_weather")
    assert text.endswith("assistant\n<tool_call>\n") and parser.constraint.kind == "call"


def test_tool_result_prompt_is_the_qwen_templates_shape():
    """The turn after a tool result, as the default model's engine sends it, is what the GGUF's own chat template
    renders for the same conversation (tools in the system turn, the result as <tool_response> in a user turn),
    plus only TOOL_RESULT_NOTE at the end of the system turn."""
    import json

    import jinja2

    from runtime.llm.chat_format import TOOL_RESULT_NOTE, chat_format
    from runtime.llm.embedded import checkpoint_dir
    from runtime.llm.prompt import build_prompt
    from runtime.llm.tokenizer import TextTokenizer

    path = checkpoint_dir(DEFAULT)
    tok = TextTokenizer(path)
    template = json.loads((path / "tokenizer_config.json").read_text())["chat_template"]
    messages = (ChatMessage("system", "Be brief."),) + ANSWERED
    ids, parser, _ = build_prompt(ChatRequest(messages=messages, tools=(WEATHER, TIME), tool_choice="auto"),
                                  chat_format("qwen2.5", tok), tok, DEFAULT, max_prompt_tokens=2000, constrain=True)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **_: json.dumps(x, ensure_ascii=False)
    wire = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ASK.content},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "18C, sunny"}]
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                               "parameters": t.parameters}} for t in (WEATHER, TIME)]
    expected = env.from_string(template).render(messages=wire, tools=tools, add_generation_prompt=True)
    system_end = expected.index("</tool_call><|im_end|>") + len("</tool_call>")
    expected = expected[:system_end] + "\n\n" + TOOL_RESULT_NOTE + expected[system_end:]
    assert "".join(tok.tok.id_to_token(i) if i in tok.stop_ids or i == tok.token_id("<|im_start|>")
                   else tok.decode([i]) for i in ids) == expected
    assert expected.endswith("<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response><|im_end|>\n"
                             "<|im_start|>assistant\n")
    assert parser.constraint.kind == "text"


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
    ('Sure:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', False),  # fenced after text
    ("Calling get_weather({city: Paris})", False),                                # pseudo-JSON, bare keys
    ("Run `get_weather` for Paris.", False),                                      # inline code
])
def test_tools_grammar(tokenizer, text, ok):
    assert _accepts(tokenizer, constraint_for((ASK,), (WEATHER, TIME), "auto", None), text) is ok


def test_text_call_and_json_grammars(tokenizer):
    text = constraint_for(ANSWERED, (WEATHER,), "auto", None)
    assert _accepts(tokenizer, text, "It is 18 degrees and sunny in Paris.")
    assert not _accepts(tokenizer, text, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert not _accepts(tokenizer, text, 'Here it is: ```json\n{"name": "get_weather", "arguments": {}}\n```')
    assert not _accepts(tokenizer, text, "The result is {temperature: 18, sky: sunny}.")
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


def test_a_fence_or_json_after_text_is_not_shown():
    """Tools offered, decoded without the grammar: text up to a code fence / JSON opening is shown, the rest is
    not (a call in it is still made)."""
    text, calls = _run(OutputParser(tools=(WEATHER,), parse_tools=True),
                       ["It is sunny. `", '``json\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n```'])
    assert text == "It is sunny. " and [c.name for c in calls] == ["get_weather"]
    text, calls = _run(OutputParser(tools=(WEATHER,), parse_tools=True),
                       ["Here: ", "{", ' "sky": "sunny"}', " and more"])
    assert text == "Here: " and not calls
    text, calls = _run(OutputParser(tools=(WEATHER,), parse_tools=True), ["```python\nprint(1)\n```"])
    assert text == "" and not calls
    # a <tool_call> block cut off by max_tokens, or not a valid call, is not shown
    text, calls = _run(OutputParser(tools=(WEATHER,), parse_tools=True), ["Sure.\n<tool_call>\n", '{"name": "get_w'])
    assert text == "Sure.\n" and not calls
    text, calls = _run(OutputParser(tools=(WEATHER,), parse_tools=True),
                       ['OK <tool_call>{"name": "get_news", "arguments": {}}</tool_call> done'])
    assert text == "OK  done" and not calls
    # no tools offered: the same text is shown as it is
    text, _ = _run(OutputParser(), ["It is sunny. ```json\n{\"a\": 1}\n```"])
    assert text == 'It is sunny. ```json\n{"a": 1}\n```'


def _feed(gate: CallGate, steps):
    verdicts = [gate.feed(token, top) for token, top in steps]
    return verdicts[-1]


NAMES = ("get_weather", "set_timer")
OPENING = [('{"', [('{"', 0.8)]), ("name", [("name", 1.0)]), ('":', [('":', 1.0)]), (' "', [(' "', 1.0)])]


def _call(name_steps, city_top, city=None):
    return (OPENING + name_steps + [('",', [('",', 1.0)]), (' "', [(' "', 1.0)]), ("arguments", [("arguments", 1.0)]),
                                    ('":', [('":', 1.0)]), (' {"', [(' {"', 1.0)]), ("city", [("city", 1.0)]),
                                    ('":', [('":', 1.0)]), (' "', [(' "', 1.0)]), (city or city_top[0][0], city_top),
                                    ('"}}', [('"}}', 0.8), ('"}', 0.2)])])


def test_call_gate_passes_a_confident_call_and_refuses_an_unsure_one():
    sure_name = [("get", [("get", 0.95), ("set", 0.03), ("weather", 0.01)]), ("_weather", [("_weather", 0.99)])]
    gate = CallGate(NAMES)
    assert _feed(gate, _call(sure_name, [("Paris", 0.99), ("London", 0.01)])) is True and gate.prob > 0.92
    # the model would rather call `add`: 0.62 of the mass is on offered names -> refused at the name
    gate = CallGate(NAMES)
    assert _feed(gate, OPENING + [("get", [("get", 0.60), ("add", 0.25), ("set", 0.02), ("sum", 0.05)])]) is False
    assert gate.prob < 0.7
    # confident first token, then it wants get_sum, not get_weather
    assert _feed(CallGate(NAMES), OPENING + [("get", [("get", 0.99)]), ("_weather", [("_sum", 0.7), ("_weather", 0.3)])]
                 ) is False
    # a sure name but a guessed city (the question named none): refused at the value's first token
    gate = CallGate(NAMES)
    steps = _call(sure_name, [("London", 0.42), ("New", 0.3), ("Paris", 0.1)])
    assert _feed(gate, steps) is False and gate.verdict is False
    # the grammar forced a token the model did not have in its top k at all
    assert _feed(CallGate(NAMES), _call(sure_name, [("Tokyo", 0.9)], city="Oslo")) is False
    # plain text: nothing to judge
    assert _feed(CallGate(NAMES), [("It", [("It", 0.5), ('{"', 0.4)]), (" is", [(" is", 1.0)])]) is None


def test_call_gate_reads_values_whole():
    gate = CallGate(("set_timer",))
    steps = OPENING + [("set", [("set", 1.0)]), ("_timer", [("_timer", 1.0)]), ('",', [('",', 1.0)]),
                       (' "arguments": {"minutes": ', [(' "arguments": {"minutes": ', 1.0)])]
    assert _feed(gate, steps + [("1", [("1", 0.5), ("2", 0.4)]), ("}}", [("}}", 1.0)])]) is False   # a guess
    # only a value's first token counts
    assert _feed(CallGate(("set_timer",)), steps + [("1", [("1", 0.99)]), ("0", [("0", 0.5)]), ("}}", [("}}", 1.0)])]
                 ) is True
    # "C" + "airo" and the one token "Cairo" are the same value: both count for it
    sure_name = [("get", [("get", 0.99)]), ("_weather", [("_weather", 1.0)])]
    gate = CallGate(NAMES)
    steps = _call(sure_name, [("C", 0.85), ("Cairo", 0.12), ("Alexandria", 0.02)])
    steps.insert(-1, ("airo", [("airo", 1.0)]))
    assert _feed(gate, steps) is True and gate.prob > 0.95
