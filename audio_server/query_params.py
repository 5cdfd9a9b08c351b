"""Numbers from a socket's query string (`?sample_rate=16000&silence_ms=400`), read with a clear message.

`int("abc")` says "invalid literal for int() with base 10: 'abc'", which names neither the parameter nor what it
should be; these say both, and the range, so the client's `error` event can be acted on.
"""

from __future__ import annotations

from collections.abc import Mapping


def query_number(query: Mapping[str, str], name: str, default: float, *, integer: bool, low: float,
                 high: float) -> float:
    """`query[name]` as an int (`integer`) or a float in [low, high], `default` when absent or empty.

    Raises ValueError naming the parameter, the kind of number and the range."""
    kind = "an integer" if integer else "a number"
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        shown = raw if len(raw) <= 16 else raw[:16] + "…"
        raise ValueError(f"{name} must be {kind} between {low:g} and {high:g} (got {shown!r})") from None
    if not low <= value <= high:  # also refuses nan (every comparison is False)
        raise ValueError(f"{name} must be {kind} between {low:g} and {high:g} (got {value:g})")
    return value
