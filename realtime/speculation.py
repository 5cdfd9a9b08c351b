"""A speculative response, executed: the backend's stream started on the turn so far, held unsent.

The session decides when to speculate and whether a response may take a speculation over
(`RealtimeSession.speculation_request` / `speculation_matches`); this module only runs one. `PreparedStream`
drives the backend's response stream from the moment the speculation starts — the LLM writes, the first sentence
is synthesised — and keeps its outputs. Nothing reaches the session meanwhile, so a dropped speculation leaves no
trace: no event, no item, no turn latency, nothing in a later prompt.

When a response takes it over, `PreparedStream` *is* its stream: the runner `asend`s to it exactly as to the
backend's own, and it hands out the kept outputs first, then the rest as they come. The backend sees the same
sequence of sends as in a response that was never speculative (`None` after text, the `Played` of each audio
chunk once it is out), so the response is the same one, only earlier; and since the runner's playout starts when
the runner reads the first chunk, its pacing and events start at the takeover, as if the response had begun there.

The stream is pumped up to its first audio chunk and then waits for that chunk's `Played`: a speculation holds at
most what the backend prepares ahead of playback (the cascade: the LLM's text and a sentence or two of speech).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine

from realtime.backends.base import AudioChunk, Played, ResponseOutput, ResponseStream
from realtime.config import ResponseOptions
from runtime.chat_api import ChatRequest

log = logging.getLogger(__name__)
_END = object()


class PreparedStream:
    """A response stream that is already running. `spawn(coro, what)` runs its pump (the runner's TaskSet, so a
    closing session cancels it with everything else)."""

    def __init__(self, speculation_id: str, options: ResponseOptions, chat: ChatRequest, stream: ResponseStream,
                 spawn: Callable[[Coroutine, str], asyncio.Task],
                 on_close: Callable[[PreparedStream], None] | None = None):
        self.id, self.options, self.chat = speculation_id, options, chat
        self._stream = stream
        self._on_close = on_close
        self._outputs: asyncio.Queue = asyncio.Queue()
        self._acks: asyncio.Queue[Played | None] = asyncio.Queue(maxsize=1)
        self._owes_ack = False  # the last output handed out was audio: its `Played` goes to the backend
        self.prepared = 0  # outputs produced so far (logs)
        self.audio_ready = False  # its first audio chunk is waiting
        self._pump = spawn(self._run(), f"speculation:{speculation_id}")

    async def _run(self) -> None:
        played: Played | None = None
        try:
            while True:
                try:
                    output = await self._stream.asend(played)
                except StopAsyncIteration:
                    self._outputs.put_nowait(_END)
                    return
                self.prepared += 1
                self.audio_ready = self.audio_ready or isinstance(output, AudioChunk)
                self._outputs.put_nowait(output)
                played = await self._acks.get() if isinstance(output, AudioChunk) else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the response's failure, for whoever takes it over
            self._outputs.put_nowait(exc)

    # ---- the ResponseStream interface the runner drives ------------------------------------------------
    async def asend(self, played: Played | None) -> ResponseOutput:
        if self._owes_ack:
            self._owes_ack = False
            self._acks.put_nowait(played)
        item = await self._outputs.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, Exception):
            raise item
        self._owes_ack = isinstance(item, AudioChunk)
        return item

    async def aclose(self) -> None:
        """Stop the pump and close the backend's stream (its LLM and synthesis stop, as at a cancel). Idempotent."""
        if not self._pump.done():
            self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)
        await self._stream.aclose()
        if self._on_close is not None:
            self._on_close(self)
