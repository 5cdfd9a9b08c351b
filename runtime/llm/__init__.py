"""Chat LLMs on the shared runtime: embedded GGUF models, their conversion, chat templates, engines.

One engine per model per process, shared by every caller (HTTP routes, realtime sessions)::

    from runtime.llm import get_engine
    engine = get_engine()                      # the default LLM (VOXLINE_LLM_MODEL or qwen2.5-coder-0.5b-instruct)
    async for delta in engine.stream(ChatRequest(messages=(ChatMessage("user", "Hi"),))): ...

Models are registered lazily by name (``"module:function"`` strings): importing this package loads
nothing heavy. Environment knobs (documented in :func:`options_from_env`): ``VOXLINE_LLM_MODEL``,
``VOXLINE_LLM_BACKEND`` (``torch`` | ``llamacpp`` | ``vllm``), ``VOXLINE_LLM_SLOTS``, ``VOXLINE_LLM_CAPACITY``,
``VOXLINE_LLM_DTYPE``, ``VOXLINE_LLM_MTP`` (drafts per step; needs trained MTP weights).
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
import time

from runtime.llm.embedded import DEFAULT_LLM, EMBEDDED_LLMS
from runtime.llm import observe

log = logging.getLogger(__name__)

#: model id -> "module:function(model_id) -> ChatEngine"
REGISTRY: dict[str, str] = {
    "qwen2.5-coder-0.5b-instruct": "runtime.llm.loader:load_embedded",
    "smollm2-135m-instruct": "runtime.llm.loader:load_embedded",
    "tiny-vlm-random": "runtime.llm.vlm:load_tiny_vlm",
}
#: other names clients use -> model id
ALIASES: dict[str, str] = {
    "qwen2.5-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
    "smollm2": "smollm2-135m-instruct",
}
#: OpenAI's chat model names the SDK's examples send: aliases of the default model (whichever that is), as
#: whisper-1, tts-1 and gpt-realtime are of ours. The response's `model` names the model that answered.
OPENAI_CHAT_ALIASES = ("gpt-4o", "gpt-4o-mini")
#: built for tests (random weights): served when asked for by name, not offered in /v1/models
TEST_ONLY = frozenset({"tiny-vlm-random"})
DESCRIPTIONS: dict[str, str] = {name: s.description for name, s in EMBEDDED_LLMS.items()}
DESCRIPTIONS["tiny-vlm-random"] = ("tiny vision-language model with RANDOM weights, built in code to test "
                                   "the image path (its answers are meaningless)")

_engines: dict[str, object] = {}
_lock = threading.Lock()


def default_model() -> str:
    name = os.environ.get("VOXLINE_LLM_MODEL", DEFAULT_LLM)
    return ALIASES.get(name, name)


def resolve(name: str | None) -> str:
    """A model id from a client's ``model`` (None -> the default); ValueError names the choices."""
    if not name or name in OPENAI_CHAT_ALIASES:
        return default_model()
    name = ALIASES.get(name, name)
    if name not in REGISTRY:
        raise ValueError(f"unknown chat model {name!r}; available: {', '.join(REGISTRY)} "
                         f"({', '.join(OPENAI_CHAT_ALIASES)}: the default, {default_model()})")
    return name


def get_engine(model: str | None = None):
    """The process-wide engine serving ``model`` (created on first use; later calls share it)."""
    model_id = resolve(model)
    with _lock:
        engine = _engines.get(model_id)
        if engine is None:
            t0 = time.perf_counter()
            module, _, attr = REGISTRY[model_id].partition(":")
            engine = observe.instrument(getattr(importlib.import_module(module), attr)(model_id))
            _engines[model_id] = engine
            log.info("loaded chat model %s (%s) in %.1fs", model_id, type(engine).__name__,
                     time.perf_counter() - t0)
        return engine


def loaded(model: str | None = None) -> bool:
    return resolve(model) in _engines


def model_cards(created: int = 1763856000) -> list[dict]:
    """``/v1/models`` entries for every chat model (loaded or not)."""
    return [{"id": name, "object": "model", "created": created, "owned_by": "voxline", "kind": "llm",
             "description": DESCRIPTIONS.get(name, ""), "default": name == default_model()}
            for name in REGISTRY]


def close_all() -> None:
    with _lock:
        for engine in _engines.values():
            close = getattr(engine, "close", None)
            if close:
                close()
        _engines.clear()
