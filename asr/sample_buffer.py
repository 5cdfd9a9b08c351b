"""A growing window of audio samples: appended at the end, dropped from the front.

Streams append a 20 ms frame at a time to buffers that may hold minutes, so an append must cost the frame,
not a copy of everything held. Storage is reused and doubles only when the live samples need it (amortised
O(1) per sample); dropping from the front moves an offset. Used by the streaming transcriber
(`asr.streaming`) and the realtime session's input buffer (`realtime.turns`).
"""

from __future__ import annotations

import numpy as np


class SampleBuffer:
    """float32 samples; index 0 is the oldest sample still held."""

    def __init__(self, capacity: int = 16000):
        self._buf = np.zeros(max(1, capacity), np.float32)
        self._start = self._end = 0  # the live samples are _buf[_start:_end]

    def __len__(self) -> int:
        return self._end - self._start

    def append(self, audio: np.ndarray) -> None:
        n = len(audio)
        if self._end + n > len(self._buf):
            self._make_room(n)
        self._buf[self._end:self._end + n] = audio
        self._end += n

    def _make_room(self, n: int) -> None:
        """Move the live samples to the front, into larger storage when they would fill more than half of it
        (so the next compaction is at least as many appended samples away as it copies)."""
        live = len(self)
        storage = self._buf
        if live + n > len(storage) // 2:
            storage = np.zeros(max(2 * len(storage), 2 * (live + n)), np.float32)
        storage[:live] = self._buf[self._start:self._end]  # numpy copies overlapping ranges safely
        self._buf, self._start, self._end = storage, 0, live

    def view(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Samples [start, end) counted from the oldest held, clamped to what is held. A view: copy it to keep it
        past the next append or drop."""
        size = len(self)
        end = size if end is None else min(max(0, end), size)
        start = min(max(0, start), end)
        return self._buf[self._start + start:self._start + end]

    def drop(self, n: int) -> None:
        """Forget the oldest `n` samples (all of them if fewer are held)."""
        self._start += min(max(0, n), len(self))
        if self._start == self._end:
            self._start = self._end = 0
