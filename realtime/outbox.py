"""Outgoing events of one session: two lanes and one writer, so control never waits behind audio.

- The **urgent lane** carries session-level events (VAD, commits, transcripts, errors, session updates) and
  the closing events of a cancelled response.
- The **stream lane** carries each response's own events in order (items, text and audio deltas, done).

The writer always drains the urgent lane first. `drop(response_id)` removes a cancelled response's queued
events and refuses its later ones, so once `response.done{cancelled}` is queued no audio of that response
can follow it.

Both lanes together are bounded (`max_queued`): a response's audio producer already waits for room in
the stream lane, but text deltas and every urgent event are produced by the model or by the client's own
requests. A client that keeps sending but does not read would make them pile up; past the bound the
outbox stops queueing and reports it once (`on_overflow`), and the edge drops the client.

`flushed()` returns once nothing is queued *and* the writer is not inside a send: a graceful close waits
for it, so the last event (the `response.done` of a shutdown) is on the wire before the writer is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from realtime.events import ServerEvent

log = logging.getLogger(__name__)
MAX_STREAM_QUEUE = 64  # queued stream events before a response's producer waits for the socket
MAX_QUEUED_EVENTS = 2048  # both lanes: beyond this the client is not reading (Settings.max_queued_events)
# Cancelled responses whose late stream events are refused. A response produces events only while the session
# has it live, so only the last few can still be in flight; remembering every one would grow for the life of a
# session.
DROPPED_REMEMBERED = 32


class Outbox:
    def __init__(self, send: Callable[[ServerEvent], Awaitable[None]],
                 on_sent: Callable[[ServerEvent], None] | None = None, *, max_queued: int = MAX_QUEUED_EVENTS,
                 on_overflow: Callable[[int], None] | None = None):
        self._send, self._on_sent = send, on_sent
        self.max_queued, self._on_overflow = max_queued, on_overflow
        self.overflowed = False
        self._urgent: deque[ServerEvent] = deque()
        self._stream: deque[ServerEvent] = deque()
        self._dropped: OrderedDict[str, None] = OrderedDict()  # the last DROPPED_REMEMBERED cancelled responses
        self.dropped_events = 0  # stream events dropped or refused because their response was cancelled
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()  # nothing queued and no send in progress
        self._idle.set()
        self._observers: list[Callable[[ServerEvent], None]] = []
        self.sent = 0

    def observe(self, callback: Callable[[ServerEvent], None]) -> None:
        """Call `callback(event)` for every event accepted, in the order the session emitted them (before
        the lanes reorder them for the wire)."""
        self._observers.append(callback)

    def put(self, event: ServerEvent, urgent: bool) -> None:
        if self.overflowed:
            return  # the client is being dropped: nothing more is kept for it
        if event.response_id is not None and event.response_id in self._dropped and not urgent:
            self.dropped_events += 1
            return
        if len(self._urgent) + len(self._stream) >= self.max_queued:
            self.overflowed = True
            log.warning("outbox: %d events wait for a client that is not reading", self.max_queued)
            if self._on_overflow is not None:
                self._on_overflow(self.max_queued)
            return
        (self._urgent if urgent else self._stream).append(event)
        for observer in self._observers:
            observer(event)
        if len(self._stream) >= MAX_STREAM_QUEUE:
            self._room.clear()
        self._idle.clear()
        self._wake.set()

    def drop(self, response_id: str) -> int:
        """Forget a response's queued stream events and refuse later ones. Returns how many were dropped."""
        self._dropped[response_id] = None
        while len(self._dropped) > DROPPED_REMEMBERED:
            self._dropped.popitem(last=False)
        before = len(self._stream)
        self._stream = deque(e for e in self._stream if e.response_id != response_id)
        self._update_room()
        self.dropped_events += before - len(self._stream)
        return before - len(self._stream)

    async def room(self) -> None:
        """Wait until the stream lane has room (a slow reader holds the producer back, not the server)."""
        await self._room.wait()

    @property
    def queued(self) -> int:
        return len(self._urgent) + len(self._stream)

    async def flushed(self) -> None:
        """Until every queued event has been sent: both lanes empty and the writer's last send returned."""
        await self._idle.wait()

    def _update_room(self) -> None:
        if len(self._stream) < MAX_STREAM_QUEUE // 2:
            self._room.set()

    async def run(self) -> None:
        """The writer: one event at a time, urgent first. Runs until cancelled or the send fails."""
        while True:
            if not self._urgent and not self._stream:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            event = self._urgent.popleft() if self._urgent else self._stream.popleft()
            self._update_room()
            await self._send(event)
            self.sent += 1
            if self._on_sent is not None:
                self._on_sent(event)
