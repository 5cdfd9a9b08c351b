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
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from realtime.protocol import ServerEvent

log = logging.getLogger(__name__)
MAX_STREAM_QUEUE = 64  # queued stream events before a response's producer waits for the socket
MAX_QUEUED_EVENTS = 2048  # both lanes: beyond this the client is not reading (Settings.max_queued_events)


class Outbox:
    def __init__(self, send: Callable[[ServerEvent], Awaitable[None]],
                 on_sent: Callable[[ServerEvent], None] | None = None, *, max_queued: int = MAX_QUEUED_EVENTS,
                 on_overflow: Callable[[int], None] | None = None):
        self._send, self._on_sent = send, on_sent
        self.max_queued, self._on_overflow = max_queued, on_overflow
        self.overflowed = False
        self._urgent: deque[ServerEvent] = deque()
        self._stream: deque[ServerEvent] = deque()
        self._dropped: set[str] = set()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.sent = 0

    def put(self, event: ServerEvent, urgent: bool) -> None:
        if self.overflowed:
            return  # the client is being dropped: nothing more is kept for it
        if event.response_id is not None and event.response_id in self._dropped and not urgent:
            return
        if len(self._urgent) + len(self._stream) >= self.max_queued:
            self.overflowed = True
            log.warning("outbox: %d events wait for a client that is not reading", self.max_queued)
            if self._on_overflow is not None:
                self._on_overflow(self.max_queued)
            return
        (self._urgent if urgent else self._stream).append(event)
        if len(self._stream) >= MAX_STREAM_QUEUE:
            self._room.clear()
        self._wake.set()

    def drop(self, response_id: str) -> int:
        """Forget a response's queued stream events and refuse later ones. Returns how many were dropped."""
        self._dropped.add(response_id)
        before = len(self._stream)
        self._stream = deque(e for e in self._stream if e.response_id != response_id)
        self._update_room()
        return before - len(self._stream)

    async def room(self) -> None:
        """Wait until the stream lane has room (a slow reader holds the producer back, not the server)."""
        await self._room.wait()

    @property
    def queued(self) -> int:
        return len(self._urgent) + len(self._stream)

    def _update_room(self) -> None:
        if len(self._stream) < MAX_STREAM_QUEUE // 2:
            self._room.set()

    async def run(self) -> None:
        """The writer: one event at a time, urgent first. Runs until cancelled or the send fails."""
        while True:
            if not self._urgent and not self._stream:
                self._wake.clear()
                await self._wake.wait()
                continue
            event = self._urgent.popleft() if self._urgent else self._stream.popleft()
            self._update_room()
            await self._send(event)
            self.sent += 1
            if self._on_sent is not None:
                self._on_sent(event)
