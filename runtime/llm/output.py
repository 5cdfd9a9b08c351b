"""Turning one request's decoded text into :class:`ChatDelta` pieces: stop strings and tool calls.

:class:`OutputParser` is fed text as the detokenizer releases it and returns what may be shown now.
It holds back only what could still become a stop string or a ``<tool_call>`` tag, so streamed text
is never retracted, and it collects ``<tool_call>{json}</tool_call>`` blocks into :class:`ToolCall`s.

A *forced* call (``tool_choice`` names a function, or ``"required"``) starts inside the call: the engine
prefills ``<tool_call>\\n{"name": "...`` into the prompt and the parser completes the JSON body, ending
the response as soon as the top-level object closes. If what the model wrote is not valid JSON (e.g.
``max_tokens`` ran out) the call is still well-formed: a known tool name and ``{}`` as arguments.

With tools offered, a code fence or a JSON object's opening (``{"``) in the text ends what is shown: the rest is
held back and, at the end, taken as a call if it is one (a bare or fenced call after a sentence) or dropped; a
``<tool_call>`` block that is no valid call, or is cut off, is dropped too.
A voice session speaks every character of the text, and a call written out as text must never be spoken; the
tool grammar (:mod:`runtime.llm.tool_constraint`) already keeps such text from being written, this is the same
rule for an engine that decodes without it.
"""
from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Sequence

from runtime.chat_api import ToolCall, ToolSpec
from runtime.llm.tool_constraint import OutputConstraint
from runtime.llm.chat_format import TOOL_CLOSE, TOOL_OPEN, json_object_end, new_call_id, parse_tool_call

log = logging.getLogger(__name__)

#: what ends the shown text of a tools-offered reply: a code fence, or a JSON object's opening
_HIDDEN = re.compile(r"```|\{\s*[\"']")
#: a tail that may still become one (held back)
_MAYBE_HIDDEN = re.compile(r"`{1,2}$|\{\s*$")


@dataclass
class Parsed:
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    done: bool = False              # a stop string matched, or a forced call completed


def _holdback(buf: str, needles: Sequence[str]) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of one of ``needles``."""
    best = 0
    for n in needles:
        for k in range(min(len(n) - 1, len(buf)), 0, -1):
            if buf.endswith(n[:k]):
                best = max(best, k)
                break
    return best


class OutputParser:
    """Stop strings + tool-call extraction over a stream of text pieces (one request)."""

    def __init__(self, stop: Sequence[str] = (), tools: Sequence[ToolSpec] = (), parse_tools: bool = False,
                 forced_prefix: str | None = None) -> None:
        self.stop = tuple(s for s in stop if s)
        self.tools = tuple(tools)
        self.parse_tools = parse_tools and bool(tools)
        self.buf = ""
        #: inside a <tool_call> block: the JSON body so far (None = in plain text)
        self.call_body: str | None = forced_prefix
        self.forced = forced_prefix is not None
        self.n_calls = 0
        # Small coder models often answer a tool request with a bare (or ```json-fenced) JSON object
        # instead of the tags; while the reply could still be one, nothing is shown.
        self.maybe_bare = self.parse_tools and not self.forced
        #: the grammar the engine decodes under (set by ``build_prompt(constrain=True)``; None = free decoding)
        self.constraint: OutputConstraint | None = None
        #: JSON asked for from an engine that cannot constrain: a markdown fence around it is taken off
        self.unfence = False
        #: tools offered: the text from a code fence / JSON opening on (never shown; maybe a call, see ``finish``)
        self.hidden: str | None = None

    def feed(self, piece: str) -> Parsed:
        out = Parsed()
        if self.hidden is not None:
            self.hidden += piece
            if any(s in self.hidden for s in self.stop):
                out.done = True
            return out
        self.buf += piece
        if self.unfence and not self._unfenced():
            return out
        if self.maybe_bare:
            state, call, rest = self._bare_check()
            if state == "pending":
                return out
            self.maybe_bare = False
            if call is not None:
                out.calls.append(call)
                self.n_calls += 1
                self.buf = rest
        while True:
            if self.call_body is not None:
                if not self._advance_call(out):
                    return out
                if out.done:
                    return out
                continue
            # Plain text: stop strings first (they end everything), then the tool tag.
            cut = min((i for i in (self.buf.find(s) for s in self.stop) if i >= 0), default=-1)
            tag = self.buf.find(TOOL_OPEN) if self.parse_tools else -1
            m = _HIDDEN.search(self.buf) if self.parse_tools else None
            hide = m.start() if m else -1
            if cut >= 0 and (tag < 0 or cut <= tag) and (hide < 0 or cut <= hide):
                out.text += self.buf[:cut]
                self.buf, out.done = "", True
                return out
            if hide >= 0 and (tag < 0 or hide < tag):
                out.text += self.buf[:hide]
                self.buf, self.hidden = "", self.buf[hide:]
                return out
            if tag >= 0:
                out.text += self.buf[:tag]
                self.buf, self.call_body = self.buf[tag + len(TOOL_OPEN):], ""
                continue
            hold = _holdback(self.buf, self.stop + ((TOOL_OPEN,) if self.parse_tools else ()))
            if self.parse_tools and (m := _MAYBE_HIDDEN.search(self.buf)):
                hold = max(hold, len(self.buf) - m.start())
            out.text += self.buf[:len(self.buf) - hold]
            self.buf = self.buf[len(self.buf) - hold:]
            return out

    def _unfenced(self, final: bool = False) -> bool:
        """``unfence``: drop an opening ```` ```json ```` line (the closing fence then ends the output, as a stop
        string); False while the reply could still be opening one."""
        head = self.buf.lstrip()
        if head.startswith("```"):
            if "\n" not in head and not final:
                return False
            self.buf = head.split("\n", 1)[1] if "\n" in head else ""
            self.stop += ("```",)
        elif not final and (not head or "```".startswith(head)):
            return False
        self.unfence = False
        return True

    def _bare_check(self, final: bool = False) -> tuple[str, ToolCall | None, str]:
        """("pending" | "call" | "text", the call, text after it) for a reply that may be a bare call.
        A fenced call waits for its closing fence (or the end, ``final``), so the fence is never shown."""
        head = self.buf.lstrip()
        if not head:
            return "pending", None, ""
        fenced = head.startswith("```")
        if fenced or "```json".startswith(head):
            if len(head) < 7 and "```json".startswith(head):
                return "pending", None, ""
            head = head[3:].removeprefix("json").lstrip()
            if not head:
                return "pending", None, ""
        if not head.startswith("{"):
            return "text", None, ""
        end = json_object_end(head)
        if end == -1:
            return "pending", None, ""
        call = parse_tool_call(head[:end], self.tools) if end > 0 else None
        if call is None:
            return "text", None, ""
        rest = head[end:].lstrip()
        if fenced:
            if not final and not rest.startswith("```") and "```".startswith(rest):
                return "pending", None, ""
            rest = rest.removeprefix("```").lstrip()
        return "call", call, rest

    def _advance_call(self, out: Parsed) -> bool:
        """Move buffered text into the call body; True when a call completed (emitted into ``out``)."""
        body = self.call_body + self.buf
        close = body.find(TOOL_CLOSE)
        end = json_object_end(body)
        if close >= 0 and (end < 0 or close < end):
            self.call_body, self.buf = None, body[close + len(TOOL_CLOSE):]
            self._emit(body[:close], out)
            return True
        if end > 0 and (self.forced or close >= 0):
            self.call_body, self.buf = None, body[end:]
            self._emit(body[:end], out)
            if close >= 0:
                self.buf = body[close + len(TOOL_CLOSE):]
            return True
        self.call_body, self.buf = body, ""
        return False

    def _emit(self, body: str, out: Parsed) -> None:
        call = parse_tool_call(body, self.tools) or (self._repair(body) if self.forced else None)
        if call is None:
            # Not a valid call of an offered tool: not shown either (it would be spoken as a call written out).
            log.debug("a <tool_call> block that is no valid call was dropped: %.200s", body)
            return
        out.calls.append(call)
        self.n_calls += 1
        if self.forced:
            out.done = True

    def _repair(self, body: str) -> ToolCall:
        """A forced call whose JSON is broken: the closest declared name and ``{}`` arguments."""
        names = [t.name for t in self.tools]
        name = names[0]
        start = body.find('"name"')
        if start >= 0:
            raw = body[start + 6:].lstrip(' :"').split('"', 1)[0]
            name = (difflib.get_close_matches(raw, names, n=1, cutoff=0.0) or [name])[0]
        args = "{}"
        a = body.find('"arguments"')
        if a >= 0:
            rest = body[a + 11:].lstrip(" :")
            end = json_object_end(rest)
            if end > 0:
                try:
                    args = json.dumps(json.loads(rest[:end]), ensure_ascii=False)
                except ValueError:
                    pass
        log.warning("forced tool call was not valid JSON; sending %s with arguments %s", name, args)
        return ToolCall(id=new_call_id(), name=name, arguments=args)

    def finish(self) -> Parsed:
        """End of generation: flush held-back text; an open call is parsed (or repaired when forced)."""
        out = Parsed()
        if self.unfence:
            self._unfenced(final=True)
            if self.buf.rstrip().endswith("```"):
                self.buf = self.buf.rstrip()[:-3]
        if self.maybe_bare:
            self.maybe_bare = False
            state, call, rest = self._bare_check(final=True)
            if call is not None:
                out.calls.append(call)
                self.n_calls += 1
                self.buf = rest
        if self.hidden is not None:
            self.buf, self.hidden = self.hidden, None
            state, call, _ = self._bare_check(final=True)
            if call is not None:
                out.calls.append(call)
                self.n_calls += 1
            else:
                log.debug("tools offered: %d characters of fenced / JSON-looking text not shown", len(self.buf))
            self.buf = ""
            return out
        if self.call_body is not None:
            body = self.call_body + self.buf
            self.call_body, self.buf = None, ""
            end = json_object_end(body)
            if self.forced or end > 0:
                self._emit(body[:end] if end > 0 else body, out)
            else:       # a call cut off (max_tokens): dropped, never shown as text
                log.debug("an unfinished <tool_call> block was dropped: %.200s", body)
        else:
            out.text, self.buf = self.buf, ""
        return out
