"""The vLLM chat engine on the packaged SmolLM2-135M: streaming, tools under our grammar, cancel, concurrency,
prefix caching, errors, the HTTP routes. A real vLLM engine, no mocks; nothing here asserts exact model text
(greedy output may differ between CPUs) or timing."""

from __future__ import annotations

import asyncio
import json

import pytest

from runtime.chat_api import ChatMessage, ChatRequest, ImagePart, ToolSpec
from tests.llm.conftest import png_data_url
from tests.vllm.conftest import SMALL

pytestmark = pytest.mark.slow

WEATHER = ToolSpec("get_weather", "Get the current weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("user", text),), **{"temperature": 0.0, "max_tokens": 24, **kw})


async def collect(engine, request: ChatRequest) -> list:
    return [d async for d in engine.stream(request)]


def test_streams_text_then_one_finish_with_usage(vllm_engine):
    deltas = asyncio.run(collect(vllm_engine, ask("Name three colours of the rainbow.", max_tokens=20)))
    texts = [d.text for d in deltas if d.text]
    assert len(texts) >= 2                                   # really streamed, not one block at the end
    *body, last = deltas
    assert all(d.finish_reason is None for d in body)
    assert last.finish_reason in ("stop", "length") and not last.text
    assert 0 < last.completion_tokens <= 20 and last.prompt_tokens > 10
    if last.finish_reason == "length":
        assert last.completion_tokens == 20


def test_max_tokens_ends_with_length(vllm_engine):
    *_, last = asyncio.run(collect(vllm_engine, ask("Write a long story about a dragon.", max_tokens=5)))
    assert last.finish_reason == "length" and last.completion_tokens == 5


def test_forced_tool_call_is_decoded_under_the_grammar(vllm_engine):
    """tool_choice names the function: vLLM's structured outputs (llguidance) write the whole call."""
    assert vllm_engine.constrains_output
    req = ChatRequest(messages=(ChatMessage("user", "What's the weather like in Paris today?"),), tools=(WEATHER,),
                      tool_choice="get_weather", temperature=0.0, max_tokens=40)
    deltas = asyncio.run(collect(vllm_engine, req))
    calls = [d.tool_call for d in deltas if d.tool_call]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].id.startswith("call_")
    args = json.loads(calls[0].arguments)
    assert isinstance(args, dict) and set(args) == {"city"} and isinstance(args["city"], str)
    assert deltas[-1].finish_reason == "tool_calls"


def test_auto_tools_answer_is_text_or_a_valid_call(vllm_engine):
    req = ChatRequest(messages=(ChatMessage("user", "Use the tool: what is the weather in Oslo?"),),
                      tools=(WEATHER,), temperature=0.0, max_tokens=40)
    deltas = asyncio.run(collect(vllm_engine, req))
    calls = [d.tool_call for d in deltas if d.tool_call]
    text = "".join(d.text for d in deltas)
    if calls:
        assert deltas[-1].finish_reason == "tool_calls"
        assert all(c.name == "get_weather" and set(json.loads(c.arguments)) == {"city"} for c in calls)
    else:                   # the grammar's plain text: no call-looking markup can slip through as text
        assert text.strip() and "<tool_call>" not in text and '{"' not in text


def test_json_response_format_is_valid_json(vllm_engine):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    deltas = asyncio.run(collect(vllm_engine, ask("Give the capital of France as JSON with city and country.",
                                                  max_tokens=40, json_schema=schema)))
    assert deltas[-1].finish_reason == "stop"
    value = json.loads("".join(d.text for d in deltas))
    assert set(value) == {"city", "country"}


def test_cancel_aborts_the_request_in_vllm_within_a_step(vllm_engine):
    """Closing the stream aborts the request: gone from vLLM's output processor when aclose returns, and the
    engine core stops scheduling it within a step or two (counted in engine steps, not seconds)."""
    processor = vllm_engine.engine.output_processor

    async def run():
        stream = vllm_engine.stream(ask("Tell me a very long story about a dragon.", temperature=0.8,
                                        max_tokens=300))
        await stream.__anext__()
        await stream.aclose()
        unfinished = processor.get_num_unfinished_requests()
        steps = vllm_engine.stats["steps"]
        # The next request's steps say how many requests the scheduler still runs beside it.
        after = []
        async for d in vllm_engine.stream(ask("Say hello.", max_tokens=6)):
            after.append((vllm_engine.stats["steps"], vllm_engine.stats["running"], d))
        return unfinished, steps, after

    unfinished, steps, after = asyncio.run(run())
    assert unfinished == 0, "the closed request is still in vLLM's output processor"
    assert after[-1][2].finish_reason in ("stop", "length")          # the engine still serves
    alone = [s for s, running, _ in after if running == 1]
    assert alone, after
    assert alone[0] <= steps + 3, f"the aborted request ran {alone[0] - steps} steps after its stream closed"


def test_four_concurrent_requests_are_decoded_together(vllm_engine):
    """All four get their first text before any of them finishes: batched, not served one after another."""
    events: list[tuple[int, str]] = []

    async def one(i: int, question: str):
        out = []
        async for d in vllm_engine.stream(ask(question, max_tokens=16)):
            if d.text and not out:
                events.append((i, "first"))
            out.append(d)
            if d.finish_reason:
                events.append((i, "finish"))
        return out

    questions = ["Count from one to twenty in words.", "List the days of the week.",
                 "Count from one to twenty in words.", "List the months of the year."]

    async def run():
        return await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))

    results = asyncio.run(run())
    for deltas in results:
        assert deltas[-1].finish_reason in ("stop", "length")
        assert "".join(d.text for d in deltas).strip()
        assert deltas[-1].completion_tokens == 16 or deltas[-1].finish_reason == "stop"
    first_finish = next(n for n, (_, kind) in enumerate(events) if kind == "finish")
    assert {i for i, kind in events[:first_finish] if kind == "first"} == {0, 1, 2, 3}, events
    # identical greedy prompts in one batch answer alike
    assert "".join(d.text for d in results[0]) == "".join(d.text for d in results[2])


def test_next_turn_reuses_the_cached_prefix(vllm_engine):
    history = [ChatMessage("user", "My name is Ada and I like tea. " * 12 + "What is a good name for a cat?")]

    async def run():
        first = await collect(vllm_engine, ChatRequest(messages=tuple(history), temperature=0.0, max_tokens=16))
        reused = vllm_engine.stats["reused_tokens"]
        answer = "".join(d.text for d in first)
        turn2 = tuple(history + [ChatMessage("assistant", answer), ChatMessage("user", "And one for a dog?")])
        second = await collect(vllm_engine, ChatRequest(messages=turn2, temperature=0.0, max_tokens=8))
        return first[-1], second[-1], vllm_engine.stats["reused_tokens"] - reused

    first, second, reused = asyncio.run(run())
    assert second.finish_reason in ("stop", "length")
    # vLLM caches whole KV blocks: the first prompt's full blocks are not prefilled again
    assert 0 < reused <= first.prompt_tokens < second.prompt_tokens


def test_request_errors_are_the_torch_engines(vllm_engine):
    from runtime.llm.prompt import ChatRequestError, PromptTooLong

    async def first_delta(request):
        stream = vllm_engine.stream(request)
        try:
            return await stream.__anext__()
        finally:
            await stream.aclose()

    with pytest.raises(PromptTooLong) as err:
        asyncio.run(first_delta(ask("hello " * 3000)))
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(ChatRequestError, match="temperature"):
        asyncio.run(first_delta(ask("hi", temperature=-1.0)))
    with pytest.raises(ChatRequestError, match="max_tokens"):
        asyncio.run(first_delta(ask("hi", max_tokens=0)))
    with pytest.raises(ChatRequestError, match="not in tools"):
        asyncio.run(first_delta(ChatRequest(messages=(ChatMessage("user", "hi"),), tools=(WEATHER,),
                                            tool_choice="no_such_tool")))
    image = ChatMessage("user", ("What is this?", ImagePart(png_data_url())))
    with pytest.raises(ChatRequestError, match="image"):
        asyncio.run(first_delta(ChatRequest(messages=(image,))))
    assert asyncio.run(first_delta(ask("Say hello."))).text                    # and it goes on serving


def test_http_routes_stream_from_the_same_engine_with_openai_errors(vllm_server, vllm_engine):
    import openai

    client = openai.OpenAI(base_url=vllm_server.base_url + "/v1", api_key="unused-on-loopback", max_retries=0,
                           timeout=300)
    steps = vllm_engine.stats["steps"]
    chunks = list(client.chat.completions.create(model=SMALL, stream=True, max_tokens=12, temperature=0,
                                                 messages=[{"role": "user", "content": "Say hello."}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    done = client.completions.create(model=SMALL, prompt="One, two, three,", max_tokens=6, temperature=0)
    assert done.choices[0].text and done.choices[0].finish_reason in ("stop", "length")
    assert vllm_engine.stats["steps"] > steps                 # both answered by the one vLLM engine
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMALL, max_tokens=4,
                                       messages=[{"role": "user", "content": "hello " * 3000}])
    assert err.value.status_code == 400 and err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=SMALL, max_tokens=4, temperature=-1,
                                       messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400


def test_engine_flags_pass_through_to_vllm(vllm_engine):
    """VOXLINE_VLLM_ARGS: vLLM's own flags on top of our defaults (parsed only; no second engine is started)."""
    from runtime.llm.embedded import checkpoint_dir
    from runtime.llm.vllm_engine import engine_args, kv_cache_bytes

    path = checkpoint_dir(SMALL)
    args = engine_args(path, 4, 1024, "--tensor-parallel-size 2 --pipeline-parallel-size 2 --max-num-seqs 3")
    assert (args.tensor_parallel_size, args.pipeline_parallel_size, args.max_num_seqs) == (2, 2, 3)
    assert args.enable_prefix_caching and args.max_model_len == 1024
    from vllm.platforms import current_platform
    if current_platform.is_cpu():    # the KV cache the requests need, not 92% of the machine's RAM
        config = json.loads((path / "config.json").read_text())
        assert args.kv_cache_memory_bytes == kv_cache_bytes(config, 4, 1024) < 1 << 30
    assert vllm_engine.args.structured_outputs_config.backend == "guidance"
    with pytest.raises(SystemExit):
        engine_args(path, 4, 1024, "--no-such-flag")
