"""The llama.cpp chat engine (xllamacpp) on the packaged SmolLM2 GGUF: streaming, tools, cancel, concurrency,
prefix reuse, errors. Nothing here asserts exact model text (greedy output may differ between CPUs) or timing."""

from __future__ import annotations

import asyncio
import json

import pytest

from runtime.chat_api import ChatMessage, ChatRequest, ToolSpec
from tests.llm.conftest import SMALL

pytest.importorskip("xllamacpp")

WEATHER = ToolSpec("get_weather", "Get the current weather for a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("user", text),), **{"temperature": 0.0, "max_tokens": 24, **kw})


async def collect(engine, request: ChatRequest) -> list:
    return [d async for d in engine.stream(request)]


@pytest.fixture(scope="module")
def engine():
    from runtime.llm.llamacpp_engine import cpu_supported
    from runtime.llm.loader import load_llamacpp_engine
    from runtime.llm.torch_engine import EngineOptions

    if not cpu_supported():
        pytest.skip("this CPU lacks the AVX2/FMA/F16C/BMI2 the xllamacpp wheel is built for")
    eng = load_llamacpp_engine(SMALL, EngineOptions(slots=4, capacity=1024))
    yield eng
    eng.close()


def test_streams_text_then_one_finish_with_usage(engine):
    deltas = asyncio.run(collect(engine, ask("Name three colours of the rainbow.", max_tokens=20)))
    texts = [d.text for d in deltas if d.text]
    assert len(texts) >= 2                                   # really streamed, not one block at the end
    *body, last = deltas
    assert all(d.finish_reason is None for d in body)
    assert last.finish_reason in ("stop", "length") and not last.text
    assert 0 < last.completion_tokens <= 20 and last.prompt_tokens > 10
    if last.finish_reason == "length":
        assert last.completion_tokens == 20


def test_max_tokens_ends_with_length(engine):
    *_, last = asyncio.run(collect(engine, ask("Write a long story about a dragon.", max_tokens=5)))
    assert last.finish_reason == "length" and last.completion_tokens == 5


def test_forced_tool_call_goes_through_our_parser(engine):
    req = ChatRequest(messages=(ChatMessage("user", "What's the weather like in Paris today?"),), tools=(WEATHER,),
                      tool_choice="get_weather", temperature=0.0, max_tokens=40)
    deltas = asyncio.run(collect(engine, req))
    calls = [d.tool_call for d in deltas if d.tool_call]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].id.startswith("call_")
    assert isinstance(json.loads(calls[0].arguments), dict)
    assert deltas[-1].finish_reason == "tool_calls"


def test_cancel_stops_within_a_token_or_two_and_frees_the_slot(engine):
    async def run():
        stream = engine.stream(ask("Tell me a very long story about a dragon.", temperature=0.8, max_tokens=300))
        await stream.__anext__()
        await stream.aclose()
        steps = engine.stats["steps"]
        for _ in range(600):                # the next token frees the slot, however slow tokens are on a busy CPU
            if not engine.live():
                break
            await asyncio.sleep(0.05)
        return steps

    steps = asyncio.run(run())
    assert not engine.live(), "the request kept its slot after the stream closed"
    assert engine.stats["steps"] <= steps + 2
    *_, last = asyncio.run(collect(engine, ask("Say hello.", max_tokens=4)))   # the engine still serves
    assert last.finish_reason in ("stop", "length")


def test_four_concurrent_requests_are_decoded_together(engine):
    """All four get their first text before any of them finishes: batched, not served one after another."""
    events: list[tuple[int, str]] = []

    async def one(i: int, question: str):
        out = []
        async for d in engine.stream(ask(question, max_tokens=16)):
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


def test_next_turn_reuses_the_cached_prefix(engine):
    history = [ChatMessage("user", "My name is Ada and I like tea. What is a good name for a cat?")]

    async def run():
        first = await collect(engine, ChatRequest(messages=tuple(history), temperature=0.0, max_tokens=16))
        reused = engine.stats["reused_tokens"]
        answer = "".join(d.text for d in first)
        turn2 = tuple(history + [ChatMessage("assistant", answer), ChatMessage("user", "And one for a dog?")])
        second = await collect(engine, ChatRequest(messages=turn2, temperature=0.0, max_tokens=8))
        return first[-1], second[-1], engine.stats["reused_tokens"] - reused

    first, second, reused = asyncio.run(run())
    assert second.finish_reason in ("stop", "length")
    # The whole first prompt is a prefix of the second one, so llama.cpp prefilled none of it again.
    assert first.prompt_tokens <= reused < second.prompt_tokens


def test_request_errors_are_the_torch_engines(engine):
    from runtime.llm.prompt import ChatRequestError, PromptTooLong

    async def first_delta(request):
        stream = engine.stream(request)
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
    assert asyncio.run(first_delta(ask("Say hello."))).text                    # and it goes on serving


def test_llama_cpp_errors_map_to_openai_codes():
    from runtime.llm.llamacpp_engine import request_error
    from runtime.llm.prompt import ChatRequestError, PromptTooLong

    too_long = request_error({"code": 400, "type": "exceed_context_size_error", "message": "request exceeds"})
    assert isinstance(too_long, PromptTooLong) and too_long.code == "context_length_exceeded"
    bad = request_error({"code": 400, "type": "invalid_request_error", "message": "bad"})
    assert isinstance(bad, ChatRequestError) and not isinstance(bad, PromptTooLong)
    assert type(request_error({"code": 500, "type": "server_error", "message": "boom"})) is RuntimeError


def test_cpu_check_reads_the_flags(tmp_path):
    from runtime.llm.llamacpp_engine import cpu_supported

    good = tmp_path / "good"
    good.write_text("processor : 0\nflags : fpu sse2 avx f16c fma bmi2 avx2 avx512f\n")
    old = tmp_path / "old"
    old.write_text("processor : 0\nflags : fpu sse2 sse4_2 avx\n")
    assert cpu_supported(str(good)) and not cpu_supported(str(old))


def test_llama_cpp_is_the_default_backend_where_it_runs(monkeypatch, caplog):
    import logging

    from runtime.llm import llamacpp_engine, loader

    monkeypatch.delenv("VOXLINE_LLM_BACKEND", raising=False)
    monkeypatch.delenv("VOXLINE_LLM_MTP", raising=False)
    monkeypatch.delenv("VOXLINE_LLM_SLOTS", raising=False)
    if llamacpp_engine.cpu_supported():          # this machine: llama.cpp, 4 slots
        opts, _, _, backend = loader.options_from_env()
        assert backend == "llamacpp" and opts.slots == 4
    # A CPU the wheel cannot run on: the default falls back to torch and says why, without importing xllamacpp.
    monkeypatch.setattr(llamacpp_engine, "cpu_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="runtime.llm.loader"):
        opts, _, _, backend = loader.options_from_env()
    assert backend == "torch" and opts.slots == 2
    assert any("torch instead of the default llama.cpp" in r.getMessage() and "avx2" in r.getMessage()
               for r in caplog.records), caplog.text
    # Asked for by name, torch is torch and llama.cpp on such a CPU is an error, not a silent fallback.
    monkeypatch.setenv("VOXLINE_LLM_BACKEND", "torch")
    assert loader.options_from_env()[3] == "torch"
    monkeypatch.setenv("VOXLINE_LLM_BACKEND", "llamacpp")
    assert loader.options_from_env()[3] == "llamacpp"
    with pytest.raises(RuntimeError, match="AVX2"):
        loader.load_llamacpp_engine(SMALL)


def test_missing_wheel_falls_back_to_torch(monkeypatch, caplog):
    import importlib.util
    import logging

    from runtime.llm import loader

    monkeypatch.delenv("VOXLINE_LLM_BACKEND", raising=False)
    monkeypatch.delenv("VOXLINE_LLM_MTP", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xllamacpp" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="runtime.llm.loader"):
        assert loader.options_from_env()[3] == "torch"
    assert "xllamacpp is not installed" in caplog.text


def test_backend_selection(monkeypatch):
    from runtime.llm import llamacpp_engine, loader

    monkeypatch.setenv("VOXLINE_LLM_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="llamacpp"):
        loader.options_from_env()
    monkeypatch.setenv("VOXLINE_LLM_BACKEND", "llamacpp")
    assert loader.options_from_env()[0].slots == 4                  # a llama.cpp slot costs only its KV cache
    monkeypatch.setenv("VOXLINE_LLM_MTP", "1")
    with pytest.raises(ValueError, match="VOXLINE_LLM_BACKEND=torch"):
        loader.options_from_env()
    monkeypatch.setattr(llamacpp_engine, "cpu_supported", lambda: False)     # the wheel would not run here
    with pytest.raises(RuntimeError, match="AVX2"):
        loader.load_llamacpp_engine(SMALL)
