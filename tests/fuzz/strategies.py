"""Shared hypothesis strategies for the parser fuzz tests: JSON values, hostile texts, mutations of valid
messages, and one settings object so every fuzz test stays bounded in CI.

`VOXLINE_FUZZ_EXAMPLES=5000 make test PYTEST_ARGS=tests/fuzz` runs a deeper search on demand.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_SCALE = int(os.environ.get("VOXLINE_FUZZ_EXAMPLES", "0"))


def fuzz_settings(max_examples: int = 200) -> settings:
    """Bounded, deterministic-enough settings: no deadline (CI boxes are shared), no example database
    (nothing written into the tree); the failing example is printed for a regression test."""
    return settings(max_examples=_SCALE or max_examples, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---- JSON values ----------------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "auto", "none", "inf", "audio", "text", "user", "assistant", "function", "message",
                     "server_vad", "semantic_vad", "pcm16", "g711_ulaw", "audio/pcmu", "joe", "root"]),
)
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)), max_leaves=12)

# Texts that have crashed JSON parsers: deep nesting (RecursionError), integers past CPython's 4300-digit
# limit (ValueError), NaN/Infinity literals, lone surrogates, NUL bytes, huge strings.
hostile_texts = st.one_of(
    st.integers(min_value=1, max_value=60_000).map(lambda n: "[" * n),
    st.integers(min_value=1, max_value=20_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(min_value=4_301, max_value=20_000).map(lambda n: "1" * n),
    st.integers(min_value=4_301, max_value=9_000).map(lambda n: '{"type": "x", "n": ' + "9" * n + "}"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", '{"type": NaN}', '{"type": "x", "v": Infinity}', "\ud800",
                     '"\\ud800"', "\x00", "{}", "[]", "null", "true", '""', "{", "}", '{"type":', "1e999",
                     '{"type": "x", "v": 1e999}', "\ufeff{}"]),
)

any_text = st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                     json_values.map(json.dumps), hostile_texts)


@st.composite
def mutations(draw, texts: st.SearchStrategy[str]) -> str:
    """A valid message with 1–4 random edits: delete, insert, replace, duplicate a slice, truncate."""
    text = draw(texts)
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 16)))
        op = draw(st.sampled_from(("delete", "insert", "replace", "duplicate", "truncate")))
        junk = draw(st.text(alphabet=st.sampled_from('{}[]":,0123456789.-eE tfnaul\\'), max_size=6)
                    | st.text(max_size=4))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + junk + text[i:]
        elif op == "replace":
            text = text[:i] + junk + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i]
    return text


def _paths(value, prefix=()) -> list[tuple]:
    """Every location inside a JSON document (the root excluded), as key/index tuples."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append(prefix + (key,))
        out += _paths(child, prefix + (key,))
    return out


def near(valid: dict, value_pool: st.SearchStrategy = json_values) -> st.SearchStrategy[dict]:
    """Dicts close to `valid`: 1–3 point edits, each at a location chosen uniformly over the whole document
    (so a field nested four levels down is hit as often as a top-level one): the value replaced by random
    JSON, the key deleted, or an unknown key added next to it. Mostly-valid messages get past the first
    checks and reach the deep parts of a parser."""

    @st.composite
    def build(draw) -> dict:
        doc = json.loads(json.dumps(valid))
        for _ in range(draw(st.integers(1, 3))):
            paths = _paths(doc)
            if not paths:
                break
            path = draw(st.sampled_from(paths))
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            op = draw(st.integers(0, 9))
            if op < 7:
                parent[path[-1]] = draw(value_pool)
            elif op < 9 and isinstance(parent, dict):
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=10))] = draw(value_pool)
        return doc

    return build()
