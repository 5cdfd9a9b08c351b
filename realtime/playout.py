"""A response's audio on its way to the listener: encode → chunk → pace → room → tail, for every pipeline.

Audio leaves at playback speed plus a small lead (`lead_ms`): a client never holds more than that much
unplayed audio, so a barge-in really stops the voice, and the response stays `in_progress` for as long as it is
being heard. Each piece also waits for room in the socket's queue (`room`), so a slow reader is not buried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from realtime.audio import AudioFormat, OutputEncoder


class PlaybackPacer:
    """Releases a response's audio `lead_ms` before it plays at the listener. If the listener ran dry
    (audio due to be playing already), playback restarts from now."""

    def __init__(self, lead_ms: float):
        self.lead_ms = lead_ms
        self._clock: float | None = None  # loop time at which audio position 0 ms plays

    async def wait(self, start_ms: float) -> None:
        """Return when audio starting at `start_ms` is due to be sent."""
        now = asyncio.get_running_loop().time()
        if self._clock is None or now > self._clock + start_ms / 1000:
            self._clock = now - start_ms / 1000
        wait = self._clock + (start_ms - self.lead_ms) / 1000 - now
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass(frozen=True)
class Piece:
    """Wire-format audio at `start_ms` of the item's audio."""

    data: bytes
    start_ms: float
    duration_ms: float


class AudioPlayout:
    """One assistant item's audio: PCM chunks in (any one source rate), paced wire pieces of `delta_ms` out."""

    def __init__(self, fmt: AudioFormat, delta_ms: int, lead_ms: int, room: Callable[[], Awaitable[None]]):
        self.format, self.room = fmt, room
        self._piece = max(1, int(fmt.rate * delta_ms / 1000)) * fmt.bytes_per_sample
        self._pacer = PlaybackPacer(lead_ms)
        self._encoder: OutputEncoder | None = None
        self._rate: int | None = None
        self.position_ms = 0.0  # how much of the item's audio has been handed out

    def encode(self, pcm: np.ndarray, sample_rate: int) -> bytes:
        """PCM → wire bytes (streaming: resampler state carries across chunks)."""
        if self._encoder is None:
            self._encoder, self._rate = OutputEncoder(self.format, sample_rate), sample_rate
        elif sample_rate != self._rate:
            raise ValueError(f"audio at {sample_rate} Hz in a response that speaks at {self._rate} Hz")
        return self._encoder(pcm)

    def duration_ms(self, data: bytes) -> float:
        return self.format.duration_ms(len(data))

    async def pace(self, data: bytes) -> AsyncIterator[Piece]:
        """`data` in `delta_ms` pieces, each released when due and when the socket has room."""
        for offset in range(0, len(data), self._piece):
            chunk = data[offset:offset + self._piece]
            await self._pacer.wait(self.position_ms)
            await self.room()
            yield self._advance(chunk)

    def finish(self) -> Piece | None:
        """The encoder's tail (the resampler's last samples), unpaced; the next audio starts a new item at 0 ms."""
        tail = self._encoder(np.zeros(0, np.int16), last=True) if self._encoder is not None else b""
        piece = self._advance(tail) if tail else None
        self._encoder, self._rate, self.position_ms = None, None, 0.0
        return piece

    def _advance(self, data: bytes) -> Piece:
        piece = Piece(data, self.position_ms, self.duration_ms(data))
        self.position_ms += piece.duration_ms
        return piece
