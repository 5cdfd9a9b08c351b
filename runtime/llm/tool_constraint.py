"""What a request's output is allowed to be when tools or a JSON ``response_format`` are offered, as a grammar.

A small model asked to call a tool "by hope" writes the call as prose, as a bare or fenced JSON object, with
a brace missing, or calls the same tool again after its result came back (issue 20). Instead, the engine
constrains decoding (llama.cpp: its llguidance sampler; torch: the same grammar through the ``llguidance``
package) to the language of :class:`OutputConstraint`:

* ``tools`` (``tool_choice: "auto"``): plain text, or text followed by one or more
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Qwen2.5's tool format), or one bare
  or ```json-fenced call object, the JSON always valid against the offered tools' schemas. Plain text may
  not start with whitespace and never holds ``<``, ``{`` or a backtick, so a call can only be written as a
  call, and no code fence or JSON-looking text is ever spoken.
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

A grammar decides *how* a call is written, not *whether* one fits: under ``auto`` the 0.5B model starts nearly
every reply offered tools with ``{"`` — "What's two plus two?" as much as "Weather in Paris?" (first-token call
probability 0.94 vs 0.77), so no threshold there tells them apart. Where they part is what the call says, in the
model's own (unconstrained) probabilities: asked about weather or a timer it names an offered tool and then the
city or minutes from the question with confidence; asked to add or greet it would rather name ``add`` or ``say``
(the grammar forces ``get_weather`` on it), and the city it then invents is a guess ("London" 0.42, "New" 0.25).
:class:`CallGate` reads those probabilities; below :data:`MIN_CALL_PROB` the call is not made and the turn is
answered in text (the llama.cpp engine does this; it needs the per-token top-k probabilities an engine may not
give).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Sequence

from runtime.chat_api import ChatMessage, ToolSpec

KINDS = ("tools", "text", "call", "json")
#: Plain text (every kind here offers tools, so it is what gets spoken): not starting with whitespace, and with no
#: ``<`` (the lexer does not backtrack: text that could run into ``<tool_call`` would strand a call after it), no
#: ``{`` (the 0.5B model otherwise writes its call as text after a ``(``, or a pseudo-JSON one with bare keys) and
#: no backtick (a fenced call written after a sentence was once spoken aloud in a voice session).
_PLAIN = "PLAIN: /[^{<`\\s][^{<`]*/"
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


#: Below this confidence in a call (:class:`CallGate`) it is not made. Measured on the 0.5B model with the tools
#: of bench/llm_eval.py on 28 questions outside that eval (12 wanting a call, 16 not) and its 8: wanted calls
#: 0.94-1.0, unwanted ones 0.0-0.88 (tell me a joke 0.10, two plus two 0.68, the capital of Germany 0.88).
MIN_CALL_PROB = 0.9
#: top-k probabilities per token the gate reads
GATE_TOP_K = 10
_NAME_OPEN = re.compile(r'"name"\s*:\s*"')
_ARGS_OPEN = re.compile(r'"arguments"\s*:\s*')


@dataclass
class CallGate:
    """How sure the model is of the call a ``tools`` reply is writing, from its own probabilities.

    Fed every generated token with the model's top-k probabilities at that position (unconstrained: what the
    model wanted, not what the grammar let through). The confidence is the product of

    * for each token of the ``"name"`` string, the probability of the alternatives that still spell an offered
      name (so: how likely the model, left alone, names an offered tool), and
    * for each argument value, the probability of the alternatives at its first token that spell the value it
      ended up with (the city, the number: the part of a call a model can invent; "C", "cairo" and " Cairo" all
      count for "Cairo"; only the first token, so a long value is not penalised for its length).

    ``verdict``: None while undecided, True once the call's arguments close with ``prob >= min_prob``, False as
    soon as ``prob`` falls below it (the engine then answers in text instead)."""

    names: tuple[str, ...]
    min_prob: float = MIN_CALL_PROB
    text: str = ""
    prob: float = 1.0
    verdict: bool | None = None
    _name_at: int | None = field(default=None, repr=False)
    _args: "_Values | None" = field(default=None, repr=False)
    _args_text: str = field(default="", repr=False)
    #: values begun and not yet ended: (top-k at their first token, where that token starts, where the value does)
    _open: list = field(default_factory=list, repr=False)

    def feed(self, token: str, top: Sequence[tuple[str, float]]) -> bool | None:
        """One generated ``token`` and the (token text, probability) alternatives at its position."""
        if self.verdict is not None:
            return self.verdict
        before, self.text = self.text, self.text + token
        if self._name_at is None:
            m = _NAME_OPEN.search(self.text, max(0, len(before) - 16))    # (only where it can newly end)
            if m is None:
                return None
            self._name_at = m.end()
            if len(before) < self._name_at:      # this token opened the string: its probability is the
                return None                     # opening's (Qwen's ` "` is one token), not a name's
        if self._args is None:
            typed = before[self._name_at:]
            if '"' not in typed:                 # a token of the name (maybe with its closing quote)
                self._scale(sum(p for t, p in top if t and self._offered(typed + t)))
            m = _ARGS_OPEN.search(self.text, self._name_at)
            if m is None or self.verdict is not None:
                return self.verdict
            self._args = _Values()
            token = self.text[m.end():]         # the part of this token inside the arguments
        at = len(self._args_text)
        self._args_text += token
        events, closed = self._args.feed(token)
        for kind, offset in events:
            if kind == "start":
                self._open.append((top, at, offset))
            elif self._open:
                first_top, token_at, value_at = self._open.pop()
                lead, rest = self._args_text[token_at:value_at], self._args_text[value_at:].lower()
                self._scale(sum(p for t, p in first_top if t.startswith(lead) and _same_start(t[len(lead):], rest)))
            if self.verdict is not None:
                return self.verdict
        if closed:
            self.verdict = self.prob >= self.min_prob
        return self.verdict

    def _scale(self, p: float) -> None:
        self.prob *= min(1.0, p)
        if self.prob < self.min_prob:
            self.verdict = False

    def _offered(self, spelled: str) -> bool:
        """``spelled`` (the name string so far, maybe past its closing quote) is on the way to an offered name."""
        name, quote, _ = spelled.partition('"')
        return any(n == name if quote else n.startswith(name) for n in self.names)


def _same_start(alternative: str, rest: str) -> bool:
    """An alternative first token spells the start of the value as it came out (``rest``, lower case): the same
    up to letter case and leading spaces ("cairo" or " Cairo" for "Cairo")."""
    a = alternative.lstrip().lower()
    return rest.startswith(a) or a.startswith(rest)


class _Values:
    """A JSON value's text, char by char: where each scalar value inside it (string, number, literal) starts and
    ends, and when the whole value closes. Keys are not values; an empty string is none."""

    def __init__(self) -> None:
        self.stack: list[str] = []          # open containers, "{" / "["
        self.in_str = self.esc = self.is_key = False
        self.want_key = False               # inside an object, before a key
        self.literal = False                # inside a number / true / false / null
        self.opened_str = False             # a value string just opened: its first char starts the value
        self.started = False                # the current value string has content (it will report an end)
        self.done = False
        self.pos = 0                        # characters fed so far

    def feed(self, text: str) -> tuple[list[tuple[str, int]], bool]:
        """(("start" | "end", offset) events in ``text``, offsets counted from the first character fed; whether
        the top-level value closed)."""
        events: list[tuple[str, int]] = []
        for ch in text:
            at, self.pos = self.pos, self.pos + 1
            if self.done:
                break
            if self.in_str:
                if self.opened_str and ch != '"':
                    events.append(("start", at))
                    self.started = True
                self.opened_str = False
                if self.esc:
                    self.esc = False
                elif ch == "\\":
                    self.esc = True
                elif ch == '"':
                    self.in_str = False
                    if self.started:
                        events.append(("end", at))
                        self.started = False
                    self._ended_scalar()
                continue
            if self.literal and (ch.isalnum() or ch in ".-+"):
                continue
            if self.literal:
                self.literal = False
                events.append(("end", at))
                self._ended_scalar()
                if self.done:
                    break
            if ch.isspace():
                continue
            if ch == '"':
                self.in_str, self.is_key = True, self.want_key
                self.opened_str = not self.is_key
            elif ch in "{[":
                self.stack.append(ch)
                self.want_key = ch == "{"
            elif ch in "}]":
                if self.stack:
                    self.stack.pop()
                self.want_key = False
                self.done = not self.stack
            elif ch == ":":
                self.want_key = False
            elif ch == ",":
                self.want_key = bool(self.stack) and self.stack[-1] == "{"
            else:
                self.literal = True
                events.append(("start", at))
        return events, self.done

    def _ended_scalar(self) -> None:
        if not self.stack and not self.is_key:
            self.done = True               # a bare scalar as the whole value
