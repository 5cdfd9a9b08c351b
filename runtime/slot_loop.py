"""One stepping loop over a batch of slots: every session's answer is one slot of one process-wide engine.

Sessions never run a forward of their own. Each submits a :class:`Generation` (prompt ids, sampling params,
stop ids, a token budget); the loop's single thread admits it into a free slot (reset + prefill), then runs
**one** batched :meth:`DecodeEngine.step` for every live slot at a time, hands each slot its new ids and
releases the slot when its generation ends. N sessions cost one batched step per token, not N loops.

Back-pressure is per slot: a generation whose consumer is far enough ahead (`may_run()` false) sits out the
steps (its slot is inactive: no tokens, state unchanged) until `wake()` is called. Cancel takes effect
before the next step. The loop reads the device once per step (the ids), as `runtime.generate` does.

Sampling shares the engine's random stream across slots; a generation that starts while no other slot is
live re-seeds it from its own `seed`, so a response that runs alone is reproducible.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from runtime.engine import DecodeEngine
from runtime.sampling import GREEDY, SamplingParams

log = logging.getLogger(__name__)


class SlotSelector(Protocol):
    """What a per-slot logits constraint exposes to the loop (:class:`runtime.audio_decoding.AudioPhaseConstraint`,
    :class:`runtime.step_audio2.answer.SpeechAnswerConstraint`)."""

    def admit(self, slot: int, start: int, constrained: bool) -> None:
        """A new answer in `slot` starts at position `start`; `constrained` False lets it run free."""
        ...

    def select(self, rows: range | None) -> None:
        """The slots the next forwards cover (a one-slot prefill), or None for the whole batch."""
        ...


@dataclass(eq=False)
class Generation:
    """One answer decoded in the shared loop. `on_tokens(ids)` runs on the loop thread: keep it cheap
    (append to a queue); `on_finish(reason)` runs once, reason in stop | length | capacity | cancelled | error."""

    prompt: Sequence[int]
    on_tokens: Callable[[list[int]], None]
    on_finish: Callable[[str], None]
    params: SamplingParams = GREEDY
    max_new: int = 64
    stop_ids: frozenset[int] = frozenset()
    seed: int = 0
    may_run: Callable[[], bool] = lambda: True
    #: [len(prompt), D] input vectors of the prompt where they are not embedding rows (audio-encoder output at
    #: Step-Audio 2's <audio_patch> placeholders); None: the ids' own embeddings
    prompt_embeds: torch.Tensor | None = field(default=None, repr=False)
    constrained: bool = True  # under the loop's constraint (a spoken answer); False: free (ASR, text chat)
    produced: int = 0
    steps: int = 0  # verify steps this generation took part in (after its prefill)
    step_tokens: int = 0  # ids those steps committed
    finish: str = ""
    _cancelled: bool = field(default=False, repr=False)

    def cancel(self) -> None:
        self._cancelled = True


class SlotLoop:
    """Runs `engine` (batch B) on one daemon thread for every submitted :class:`Generation`."""

    def __init__(self, engine: DecodeEngine, constraint: SlotSelector | None = None, name: str = "slot-loop",
                 idle_wait_s: float = 0.05) -> None:
        self.engine, self.constraint, self.name = engine, constraint, name
        self._waiting: deque[Generation] = deque()
        self._live: dict[int, Generation] = {}  # slot -> generation
        self._cond = threading.Condition()
        self._idle_wait_s = idle_wait_s
        self._compact = engine.state.tokens.device.type == "cpu"
        self._thread: threading.Thread | None = None
        self._closed = False
        # what tests and benchmarks read: the loop is one thread, and how full its steps were
        self.thread_ids: set[int] = set()
        self.steps = 0
        self.slot_steps = 0
        self.max_live = 0

    @property
    def batch(self) -> int:
        return self.engine.batch

    def submit(self, gen: Generation) -> Generation:
        if gen.max_new < 1:
            raise ValueError("max_new must be >= 1")
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._waiting.append(gen)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return gen

    def wake(self) -> None:
        """A consumer caught up (or cancelled): re-check who may run."""
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancel every waiting and live generation and let the thread leave (waits up to `timeout_s`)."""
        with self._cond:
            self._closed = True
            for gen in [*self._waiting, *list(self._live.values())]:
                gen.cancel()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # ---- the loop thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        self.thread_ids.add(threading.get_ident())
        while True:
            with self._cond:
                # Paused slots are polled (their may_run can turn true without a wake); a cancelled
                # one must leave the wait too, or a paused generation that is cancelled never ends.
                while (not self._closed and not self._waiting and not self._runnable()
                       and not any(g._cancelled for g in self._live.values())):
                    self._cond.wait(self._idle_wait_s if self._live else None)
                if self._closed and not self._live and not self._waiting:
                    return
                admit = []
                free = [b for b in range(self.batch) if b not in self._live]
                while self._waiting and free:
                    admit.append((free.pop(0), self._waiting.popleft()))
            for slot, gen in admit:
                self._admit(slot, gen)
            self._retire_cancelled()
            if self._runnable():
                self._step()

    def _runnable(self) -> list[int]:
        return [b for b, g in self._live.items() if not g._cancelled and g.may_run()]

    def _admit(self, slot: int, gen: Generation) -> None:
        if gen._cancelled or self._closed:
            return self._end(None, gen, "cancelled")
        try:
            eng = self.engine
            if not self._live:
                eng.generator.manual_seed(gen.seed)
            eng.reset(slot, gen.params)
            if self.constraint is not None:
                self.constraint.admit(slot, len(gen.prompt), gen.constrained)
                self.constraint.select(range(slot, slot + 1))
            try:
                embeds = None if gen.prompt_embeds is None else gen.prompt_embeds[None]
                first = eng.extend(slot, list(gen.prompt), embeds=embeds)
            finally:
                if self.constraint is not None:
                    self.constraint.select(None)
        except Exception:
            log.exception("[%s] prefill failed", self.name)
            return self._end(None, gen, "error")
        self._live[slot] = gen
        self.max_live = max(self.max_live, len(self._live))
        self._deliver(slot, gen, [first])

    def _step(self) -> None:
        eng = self.engine
        run = self._runnable()
        for b in run:
            if eng.room(b) < 0:
                self._end(b, self._live[b], "capacity")
        run = [b for b in run if b in self._live]
        if not run:
            return
        # Answers take the lowest free slots, so the live ones sit at the front: on a CPU, where a step costs what
        # its batch computes, step only up to the last live slot. (A GPU step costs about the same at any batch.)
        top = max(self._live) + 1
        rows = range(0, top) if self._compact and top < eng.batch else None
        active = torch.zeros(top if rows else eng.batch, dtype=torch.bool)
        active[run] = True
        if self.constraint is not None:
            self.constraint.select(rows)
        try:
            new, num = eng.step(active.to(eng.state.tokens.device), rows=rows)
            new_l, num_l = new.tolist(), num.tolist()  # the loop's one host sync per step
        except Exception:
            log.exception("[%s] decode step failed", self.name)
            for b in list(self._live):
                self._end(b, self._live[b], "error")
            return
        finally:
            if self.constraint is not None:
                self.constraint.select(None)
        eng.commit(num_l)
        self.steps += 1
        self.slot_steps += len(run)
        for b in run:
            gen, m = self._live[b], num_l[b]
            gen.steps += 1
            gen.step_tokens += m
            kept = self._deliver(b, gen, new_l[b][:m])
            eng.rollback(b, m - kept)

    def _deliver(self, slot: int, gen: Generation, ids: list[int]) -> int:
        """Hand `ids` to the generation up to its stop id or budget; end it there. Returns how many were kept."""
        kept: list[int] = []
        reason = ""
        for t in ids:
            kept.append(t)
            if t in gen.stop_ids:
                reason = "stop"
                break
            if gen.produced + len(kept) >= gen.max_new:
                reason = "length"
                break
        gen.produced += len(kept)
        try:
            gen.on_tokens(kept)
        except Exception:
            log.exception("[%s] a consumer failed; its generation ends", self.name)
            reason = "error"
        if reason:
            self._end(slot, gen, reason)
        return len(kept)

    def _retire_cancelled(self) -> None:
        for b, gen in list(self._live.items()):
            if gen._cancelled:
                self._end(b, gen, "cancelled")

    def _end(self, slot: int | None, gen: Generation, reason: str) -> None:
        if slot is not None and self._live.get(slot) is gen:
            del self._live[slot]
            self.engine.park(slot)
        if gen.finish:
            return
        gen.finish = reason
        try:
            gen.on_finish(reason)
        except Exception:
            log.exception("[%s] on_finish failed", self.name)
