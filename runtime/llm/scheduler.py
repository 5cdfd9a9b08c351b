"""Admission for the chat engine: which request gets which batch slot, and when (no model, no torch).

:class:`SlotScheduler` holds the waiting requests (first come, first served) and the request in each
slot. A request goes to the free slot whose cached tokens share the longest prefix with its prompt,
so a voice conversation that re-sends its history every turn lands where that history is cached and
only the new tokens are prefilled. Cancelled requests leave the queue before admission and their slots
before the next step. The engine executes what this decides; the scheduler never touches a tensor.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Generic, Protocol, Sequence, TypeVar


class Schedulable(Protocol):
    prompt: list[int]
    cancelled: threading.Event


J = TypeVar("J", bound=Schedulable)


@dataclass(frozen=True)
class Admission(Generic[J]):
    """Run ``job`` in ``slot``, keeping the slot's first ``reuse`` cached positions."""

    job: J
    slot: int
    reuse: int


class SlotScheduler(Generic[J]):
    """Waiting queue + slot table of ``slots`` batch slots.

    ``reusable(prompt)`` bounds how many leading prompt positions may come from a cache (the last prompt
    token is always fed again so that the prefill samples the first token; a VLM's image rows depend
    on more than the token ids).
    """

    def __init__(self, slots: int, reusable: Callable[[Sequence[int]], int]) -> None:
        self.reusable = reusable
        self.waiting: list[J] = []
        self.running: list[J | None] = [None] * slots
        self._cached: list[list[int]] = [[] for _ in range(slots)]   # KV-valid tokens of each free slot

    def submit(self, job: J) -> None:
        self.waiting.append(job)

    @property
    def idle(self) -> bool:
        return not self.waiting and all(j is None for j in self.running)

    def live(self) -> list[int]:
        """Slots with a running request, in slot order."""
        return [s for s, j in enumerate(self.running) if j is not None]

    def cancelled(self) -> list[int]:
        """Running slots whose request was cancelled (the engine finishes them before stepping)."""
        return [s for s in self.live() if self.running[s].cancelled.is_set()]

    def admit(self) -> Admission[J] | None:
        """The next waiting request and its slot, or None (nothing waiting, or no free slot)."""
        self.waiting = [j for j in self.waiting if not j.cancelled.is_set()]
        if not self.waiting or None not in self.running:
            return None
        job = self.waiting.pop(0)
        slot, reuse = self._pick_slot(job.prompt)
        self.running[slot] = job
        self._cached[slot] = []
        return Admission(job, slot, reuse)

    def release(self, slot: int, cached: list[int]) -> J:
        """Free ``slot``; ``cached`` are the tokens its cache still holds for a later prefix match."""
        job, self.running[slot] = self.running[slot], None
        self._cached[slot] = cached
        return job

    def drain(self) -> list[J]:
        """Every waiting and running request, removed (engine shutdown)."""
        jobs = self.waiting + [j for j in self.running if j is not None]
        self.waiting, self.running = [], [None] * len(self.running)
        return jobs

    def _pick_slot(self, prompt: list[int]) -> tuple[int, int]:
        """The free slot whose cached tokens share the longest prefix with ``prompt`` (and that length);
        ties go to the lowest slot."""
        best, best_len = -1, -1
        limit = self.reusable(prompt)
        for slot, j in enumerate(self.running):
            if j is not None:
                continue
            cached, n = self._cached[slot], 0
            m = min(len(cached), limit)
            while n < m and cached[n] == prompt[n]:
                n += 1
            if n > best_len:
                best, best_len = slot, n
        return best, best_len
