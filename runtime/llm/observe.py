"""What the chat engines do, for metrics: time to first token, tokens generated, decode speed, requests waiting
and decoding. The engines know nothing of this: `instrument` wraps an engine's two streaming entry points
once, when `get_engine` creates it, and passes each request's timings to every registered observer (the
server's per-app `Metrics`; weakly held, so an app that is gone stops observing)."""

from __future__ import annotations

import functools
import threading
import time
from contextlib import aclosing
import weakref
from typing import AsyncIterator, Callable, Protocol


class LLMObserver(Protocol):
    def llm_first_token(self, model: str, seconds: float) -> None: ...

    def llm_finished(self, model: str, prompt_tokens: int, completion_tokens: int, decode_s: float) -> None: ...


_observers: "weakref.WeakSet[LLMObserver]" = weakref.WeakSet()
_lock = threading.Lock()
_live: dict[str, dict[str, int]] = {}  # model -> {"waiting": n, "decoding": n}; read by the metrics collector
_slots: dict[str, int] = {}  # model -> batch slots of its engine (requests decoded together)


def add_observer(observer: LLMObserver) -> None:
    _observers.add(observer)


def live_requests() -> dict[str, dict[str, int]]:
    """Per model: requests waiting for their first token (queued or in prefill) and requests decoding."""
    with _lock:
        return {model: dict(counts) for model, counts in _live.items()}


def engine_slots() -> dict[str, int]:
    return dict(_slots)


def _move(model: str, source: str | None, target: str | None) -> None:
    with _lock:
        counts = _live.setdefault(model, {"waiting": 0, "decoding": 0})
        if source:
            counts[source] -= 1
        if target:
            counts[target] += 1


async def _observed(model: str, deltas: AsyncIterator) -> AsyncIterator:
    t0 = time.perf_counter()
    first: float | None = None
    state: str | None = "waiting"
    _move(model, None, state)
    try:
        async with aclosing(deltas):    # closing this stream closes the engine's at once (cancels it)
            async for delta in deltas:
                if first is None and (delta.text or delta.tool_call is not None):
                    first = time.perf_counter()
                    _move(model, state, "decoding")
                    state = "decoding"
                    for o in list(_observers):
                        o.llm_first_token(model, first - t0)
                if delta.finish_reason is not None:
                    decode_s = time.perf_counter() - first if first is not None else 0.0
                    for o in list(_observers):
                        o.llm_finished(model, delta.prompt_tokens or 0, delta.completion_tokens or 0, decode_s)
                yield delta
    finally:
        _move(model, state, None)


def _wrap(model: str, method: Callable[..., AsyncIterator]) -> Callable[..., AsyncIterator]:
    @functools.wraps(method)
    def stream(*args, **kwargs) -> AsyncIterator:
        return _observed(model, method(*args, **kwargs))

    return stream


def instrument(engine: object) -> object:
    """Wrap `engine.stream` / `engine.stream_prompt` (where present) so each request is observed."""
    model = getattr(engine, "model_id", type(engine).__name__)
    slots = getattr(getattr(engine, "options", None), "slots", None)
    if isinstance(slots, int):
        _slots[model] = slots
    for name in ("stream", "stream_prompt"):
        method = getattr(engine, name, None)
        if method is not None:
            setattr(engine, name, _wrap(model, method))
    return engine
