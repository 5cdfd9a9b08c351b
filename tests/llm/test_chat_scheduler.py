"""The chat engine's admission (``SlotScheduler``) and output processing (``OutputStream``), without a
model: which request gets which slot, cancel, and text / stop strings / tool calls from token ids."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from runtime.chat_api import ToolSpec
from runtime.llm.output import OutputParser
from runtime.llm.output_stream import OutputStream
from runtime.llm.scheduler import SlotScheduler


@dataclass
class Job:
    prompt: list[int]
    cancelled: threading.Event = field(default_factory=threading.Event)


def _all_but_last(prompt):
    return max(len(prompt) - 1, 0)


def test_first_come_first_served_and_the_longest_cached_prefix_wins():
    s = SlotScheduler(2, _all_but_last)
    first, second, third = Job([1, 2, 3, 5, 6]), Job([9, 9, 1]), Job([7])
    for j in (first, second, third):
        s.submit(j)
    a = s.admit()
    assert a.job is first and (a.slot, a.reuse) == (0, 0)    # nothing cached yet: the lowest slot
    b = s.admit()
    assert b.job is second and b.slot == 1
    assert s.admit() is None                                 # both slots busy: the third waits
    s.release(0, [9, 9, 4])
    s.release(1, [1, 2, 3, 4])
    c = s.admit()
    assert c.job is third and c.slot == 0 and c.reuse == 0   # no prefix anywhere: lowest free slot
    s.release(0, [9, 9, 4])
    again = Job([1, 2, 3, 5, 8])
    s.submit(again)
    d = s.admit()
    assert (d.slot, d.reuse) == (1, 3)                       # slot 1 caches [1, 2, 3, ...]


def test_reuse_never_covers_the_last_prompt_token():
    s = SlotScheduler(1, _all_but_last)
    s.release(0, [4, 5, 6, 7])
    s.submit(Job([4, 5, 6]))
    assert s.admit().reuse == 2                              # token 6 is fed again to sample from it


def test_cancel_skips_a_waiting_request_and_frees_a_running_slot():
    s = SlotScheduler(1, _all_but_last)
    running, gone, later = Job([1]), Job([2]), Job([3])
    for j in (running, gone, later):
        s.submit(j)
    assert s.admit().job is running
    gone.cancelled.set()
    assert s.cancelled() == []
    running.cancelled.set()
    assert s.cancelled() == [0]
    assert s.release(0, []) is running and s.live() == []
    nxt = s.admit()
    assert nxt.job is later and nxt.slot == 0                # the cancelled waiting request never runs
    assert s.waiting == [] and not s.idle
    assert s.drain() == [later] and s.idle


class PieceDetok:
    """Each id decodes to a fixed piece (the real detokenizer only adds UTF-8 holdback)."""

    def __init__(self, pieces: dict[int, str]) -> None:
        self.pieces = pieces

    def push(self, ids):
        return "".join(self.pieces[i] for i in ids)

    def flush(self):
        return ""


STOP_ID = 0
PIECES = {1: "Hel", 2: "lo E", 3: "ND", 4: " more", 5: "<tool_call>", 6: '{"name": "get_weather", ',
          7: '"arguments": {"city": "Paris"}}', 8: "</tool_call>"}
WEATHER = ToolSpec(name="get_weather", description="", parameters={"type": "object"})


def _stream(parser, max_tokens=50):
    return OutputStream(PieceDetok(PIECES), parser, {STOP_ID}, max_tokens)


def test_stop_string_across_pieces_ends_the_request_and_hides_the_rest():
    out = _stream(OutputParser(stop=("END",)))
    a = out.push([1, 2])
    assert a.text == "Hello " and a.finish is None           # "E" is held back: it may start "END"
    b = out.push([3, 4, 4])                                  # tokens after the end are not used
    assert b.text == "" and b.finish == "stop" and b.used == 1 and out.generated == 3


def test_stop_token_and_max_tokens():
    out = _stream(OutputParser())
    e = out.push([1, STOP_ID, 4])
    assert (e.text, e.finish, e.used) == ("Hel", "stop", 1)
    short = _stream(OutputParser(), max_tokens=2)
    e = short.push([1, 2, 4])
    assert (e.text, e.finish, e.used) == ("Hello E", "length", 2)


def test_tool_call_is_collected_and_the_finish_says_so():
    out = _stream(OutputParser(tools=(WEATHER,), parse_tools=True))
    calls, text = [], ""
    for t in (5, 6, 7, 8):
        e = out.push([t])
        calls += e.calls
        text += e.text
        assert e.finish is None
    end = out.push([STOP_ID])
    assert text == "" and end.finish == "tool_calls"
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Paris"}')]
