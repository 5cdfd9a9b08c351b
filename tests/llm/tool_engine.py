"""The engine the tool round-trip tests share: the embedded default model (Qwen2.5-Coder-0.5B GGUF) on llama.cpp,
decoding tool calls and JSON under their grammar (runtime.llm.tool_constraint). One per test session."""

from __future__ import annotations

import functools

import pytest

from tests.llm.conftest import DEFAULT


@functools.lru_cache(maxsize=1)
def _engine():
    from runtime.llm.loader import load_llamacpp_engine
    from runtime.llm.torch_engine import EngineOptions

    return load_llamacpp_engine(DEFAULT, EngineOptions(slots=2, capacity=2048))


def constrained_engine():
    """The shared engine, or a skip saying why there is none."""
    pytest.importorskip("xllamacpp")
    from runtime.llm.llamacpp_engine import cpu_supported

    if not cpu_supported():
        pytest.skip("this CPU lacks the AVX2/FMA/F16C/BMI2 the xllamacpp wheel is built for")
    engine = _engine()
    if not engine.constrains_output:
        pytest.skip("this xllamacpp build has no llguidance grammars")
    return engine


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def matches_weather_schema(arguments: str) -> bool:
    """``arguments`` is JSON text of an object with exactly a string ``city`` (WEATHER_SCHEMA, no extra keys)."""
    import json

    try:
        args = json.loads(arguments)
    except ValueError:
        return False
    return isinstance(args, dict) and set(args) == {"city"} and isinstance(args["city"], str) and bool(args["city"])


def looks_like_call_text(text: str) -> bool:
    """Text that is a tool call written out instead of made (what the model did before the constraint)."""
    t = text.strip()
    return t.startswith(("{", "```", "<tool_call>")) or '"name"' in t or "<tool_call>" in t or '"arguments"' in t
