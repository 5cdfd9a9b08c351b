"""What a request's output is allowed to be when tools or a JSON ``response_format`` are offered, as a grammar.

A small model asked to call a tool "by hope" writes the call as prose, as a bare or fenced JSON object, with
a brace missing, or calls the same tool again after its result came back (issue 20). Instead, the engine
constrains decoding (llama.cpp: its llguidance sampler; torch: the same grammar through the ``llguidance``
package) to the language of :class:`OutputConstraint`:

* ``tools`` (``tool_choice: "auto"``): plain text, or text followed by one or more
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Qwen2.5's tool format), or one bare
  or ```json-fenced call object, the JSON always valid against the offered tools' schemas. Plain text may
  not start with ``{`` or a code fence and never holds ``<`` or ``{"``, so a call can only be written as a
  call.
* ``text``: ``auto`` right after tool results (a ``role: tool`` message / ``function_call_output`` item is
  the last one): that turn answers from the results instead of calling again. Measured on the 0.5B model,
  any call allowed there (even of another tool) made it call again or babble; a client that wants a chained
  call on that turn asks for it with ``tool_choice: "required"`` or a named function.
* ``call`` (``"required"`` or a named function): the prompt ends with ``<tool_call>\\n`` and the output is
  the call's JSON, nothing else.
* ``json`` (``response_format`` ``json_object`` / ``json_schema``): one JSON value valid against the schema,
  with no markdown fence around it.

JSON-schema compilation is llama.cpp's own (llguidance's ``%json``); this module only adds the few Lark
rules around it (the tags, the plain-text alternative).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from runtime.chat_api import ChatMessage, ToolSpec

KINDS = ("tools", "text", "call", "json")
#: Plain text: not starting like a call (``{``, ``<``, a code fence) or with whitespace, with no ``<`` at all (the
#: lexer does not backtrack: text that could run into ``<tool_call`` would strand a call after it) and no JSON
#: object's opening (``{"``: the 0.5B model otherwise writes its call as text after a ``(``).
_PLAIN = ("PLAIN: /[^{<`\\s][^<]*/ & ~/(?s:.*)\\{\\s*[\"'](?s:.*)/")
_WS = r"WS: /[ \t\r\n]+/"


@dataclass(frozen=True)
class OutputConstraint:
    """The language a request's output must belong to (see the module doc for the kinds)."""

    kind: str
    #: ``tools`` / ``call``: the schema of one call object; ``json``: the output's schema; ``text``: unused
    schema: dict | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown constraint kind {self.kind!r}; known: {', '.join(KINDS)}")

    def lark(self) -> str:
        """The constraint as an llguidance Lark grammar (what llama.cpp's ``grammar`` field takes)."""
        lines = ["%llguidance {}"]
        if self.kind == "text":
            lines += ["start: PLAIN", _PLAIN]
        elif self.kind == "tools":
            # A call also as the model likes to write it: a bare or ```json-fenced object (the reply's start;
            # runtime.llm.output parses both) — blocking those made it explain the tool in prose instead.
            lines += ["start: PLAIN | PLAIN? WS? calls | call WS? | fenced",
                      "calls: call_block (WS? call_block)* WS?",
                      'fenced: "```" "json"? WS? call WS? "```" WS?',
                      'call_block: "<tool_call>" WS? call WS? "</tool_call>"',
                      "call: %json " + json.dumps(self.schema, ensure_ascii=False), _PLAIN, _WS]
        else:
            lines += ["start: value", "value: %json " + json.dumps(self.schema, ensure_ascii=False)]
        return "\n".join(lines) + "\n"


def arguments_schema(parameters: dict | None) -> dict:
    """A tool's ``parameters`` as the schema its ``arguments`` must match: always a JSON object, and with no
    keys beyond the declared ``properties`` unless the schema says otherwise (a small model otherwise invents
    keys; OpenAI's strict mode does the same)."""
    schema = dict(parameters or {})
    schema.setdefault("type", "object")
    if "properties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def call_schema(tools: Sequence[ToolSpec]) -> dict:
    """The schema of one call object ``{"name": <a tool's name>, "arguments": <that tool's arguments>}``."""
    options = [{"type": "object",
                "properties": {"name": {"const": t.name}, "arguments": arguments_schema(t.parameters)},
                "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def answering_results(messages: Sequence[ChatMessage]) -> bool:
    """Whether this turn comes right after tool results (the last message is a ``role: tool`` one)."""
    return bool(messages) and messages[-1].role == "tool"


def constraint_for(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], choice: str,
                   json_schema: dict | None) -> OutputConstraint | None:
    """The constraint of a request whose offered ``tools`` (after ``tool_choice: none`` removed them) and
    ``choice`` are known: ``tools`` here is already narrowed to the named function when one is forced."""
    if tools and choice not in ("auto", "none"):
        return OutputConstraint("call", call_schema(tools))
    if tools:
        return OutputConstraint("text" if answering_results(messages) else "tools", call_schema(tools))
    if json_schema is not None:
        return OutputConstraint("json", json_schema)
    return None
