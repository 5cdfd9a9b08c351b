"""Output processing for one chat request: token ids in, what the client may see now out.

:class:`OutputStream` detokenizes incrementally (the detokenizer never splits a UTF-8 character),
feeds the text to :class:`runtime.llm.output.OutputParser` (stop strings, tool calls) and decides when
the request is over: a stop token, a stop string or completed forced call, or ``max_tokens``. It runs
on the engine's thread and knows nothing about slots or tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Sequence

from runtime.chat_api import ToolCall
from runtime.llm.output import OutputParser


@dataclass
class Emission:
    """What one batch of decoded tokens produced for the client."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    #: None while generating; "stop", "length" or "tool_calls" when the request is over
    finish: str | None = None
    #: tokens counted as completion tokens (a stop token is not one, nor tokens after the end)
    used: int = 0


class OutputStream:
    """Token ids -> text and tool calls for one request (``detok`` from ``TextTokenizer.detokenizer()``)."""

    def __init__(self, detok, parser: OutputParser, stop_ids: Collection[int], max_tokens: int) -> None:
        self.detok = detok
        self.parser = parser
        self.stop_ids = stop_ids
        self.max_tokens = max_tokens
        self.generated = 0
        self.any_call = False

    def push(self, tokens: Sequence[int]) -> Emission:
        """Hand ``tokens`` (just decoded, in order) over; tokens after the end are ignored."""
        out, finish = Emission(), None
        for t in tokens:
            if t in self.stop_ids:
                finish = "stop"
                break
            self.generated += 1
            out.used += 1
            parsed = self.parser.feed(self.detok.push([t]))
            out.text += parsed.text
            out.calls += parsed.calls
            if parsed.done:
                finish = "stop"
                break
            if self.generated >= self.max_tokens:
                finish = "length"
                break
        if finish is not None:
            tail = self.parser.feed(self.detok.flush())
            end = self.parser.finish()
            out.text += tail.text + end.text
            out.calls += tail.calls + end.calls
        self.any_call = self.any_call or bool(out.calls)
        if finish is not None:
            out.finish = "tool_calls" if self.any_call else finish
        return out
