"""Where a realtime session gets its LLM: the one shared `ChatEngine` of the process.

Looked up in this order, so whoever wires the app decides and tests can inject a double:
1. `app.state.chat_engine` — one engine object (a test double, or an explicit override);
2. `app.state.chat_engines(model)` — the app's accessor (model id → the process-wide engine);
3. the model hub's `llm(model)`;
4. `runtime.llm.get_engine(model)`.
A Realtime model name that is not a chat model id (`gpt-realtime`, `gpt-4o-realtime-preview`, …) selects
the default LLM. Returns None when no engine can be had (the response then ends `failed` with a clear
message). Blocking (a first load takes seconds): call it from a worker thread.

`pipeline_kind(models)` says which response pipeline the process serves: the cascade (ASR → this LLM →
TTS) or the unified audio LLM (`Settings.pipeline = "unified"`, models from `models.unified()`), which
needs no chat engine at all.
"""

from __future__ import annotations

import logging

from runtime.chat_api import ChatEngine

log = logging.getLogger(__name__)


def llm_name(model: str | None) -> str | None:
    """The chat model id for a session's `?model=`, or None for the default."""
    try:
        from runtime.llm import resolve
    except ImportError:
        return None
    try:
        return resolve(model) if model else None
    except ValueError:
        return None


def chat_engine(app_state, model: str | None = None) -> ChatEngine | None:
    engine = getattr(app_state, "chat_engine", None)
    if engine is not None:
        return engine
    name = llm_name(model)
    accessor = getattr(app_state, "chat_engines", None)
    if not callable(accessor):
        accessor = getattr(getattr(app_state, "hub", None), "llm", None)
    if callable(accessor):
        return accessor(name)
    try:
        from runtime.llm import get_engine
    except ImportError as exc:
        log.warning("no chat engine: runtime.llm is not importable (%s)", exc)
        return None
    return get_engine(name)


def engine_unavailable_reason() -> str | None:
    """Why `runtime.llm` cannot provide an engine, or None if it can be imported (tests use this to skip)."""
    try:
        import runtime.llm  # noqa: F401
    except ImportError as exc:
        return f"runtime.llm is not importable: {exc}"
    return None


def pipeline_kind(models) -> str:
    """Which response pipeline a session runs: "unified" (audio LLM, `Settings.pipeline`) or "cascade"."""
    kind = getattr(getattr(models, "settings", None), "pipeline", None) or "cascade"
    if kind not in ("cascade", "unified"):
        raise ValueError(f"unknown pipeline {kind!r}; choose cascade or unified")
    return kind
