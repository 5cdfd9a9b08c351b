"""Which chat LLM a realtime session's `?model=` names.

The engine itself reaches a session through its host (the app builds it: `audio_server.models.
realtime_chat_engine`); nothing here reads the app. A Realtime model name that is not a chat model id
(`gpt-realtime`, `gpt-4o-realtime-preview`, …) selects the default LLM.
"""

from __future__ import annotations


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


def engine_unavailable_reason() -> str | None:
    """Why `runtime.llm` cannot provide an engine, or None if it can be imported (tests use this to skip)."""
    try:
        import runtime.llm  # noqa: F401
    except ImportError as exc:
        return f"runtime.llm is not importable: {exc}"
    return None
