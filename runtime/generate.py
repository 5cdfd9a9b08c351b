"""Generation loop over a :class:`DecodeEngine`: several prompts decoded together, one slot each.

The loop is the only place that reads the device (once per step, to emit tokens and check stop
conditions); the engine's step itself never syncs. Tokens accepted past a stop token or past
``max_new_tokens`` are rolled back, so the slot ends exactly where plain decoding would have.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from runtime.engine import DecodeEngine
from runtime.sampling import GREEDY, SamplingParams


@dataclass
class GenerationResult:
    """Generated ids per prompt (the first comes from the prompt's forward) plus decode statistics."""

    tokens: list[list[int]]
    finish: list[str]                          # "stop" | "length" | "capacity"
    steps: int = 0                             # verify steps run (all slots at once)
    slot_steps: int = 0                        # (slot, step) pairs with the slot active
    step_tokens: int = 0                       # tokens those steps committed, before truncation
    per_step: list[int] = field(default_factory=list)  # committed tokens per (slot, step), in order

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens committed per verify step per slot (1.0 for plain decoding)."""
        return self.step_tokens / max(self.slot_steps, 1)


def generate(engine: DecodeEngine, prompts: Sequence[Sequence[int]],
             params: SamplingParams | Sequence[SamplingParams] = GREEDY, max_new_tokens: int = 64,
             stop_ids: Sequence[int] = (), chunk: int | None = None,
             slots: Sequence[int] | None = None,
             on_tokens: Callable[[int, list[int]], None] | None = None) -> GenerationResult:
    """Decode every prompt in its own slot (``slots``, default 0..len-1) until a stop id,
    ``max_new_tokens`` or the slot's cache capacity. ``on_tokens(i, new)`` streams each step's output."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    slots = list(range(len(prompts))) if slots is None else list(slots)
    if len(slots) != len(prompts) or len(set(slots)) != len(slots) or max(slots, default=0) >= engine.batch:
        raise ValueError(f"need {len(prompts)} distinct slots below batch size {engine.batch}, got {slots}")
    plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    stop = set(stop_ids)
    res = GenerationResult(tokens=[[] for _ in prompts], finish=[""] * len(prompts))
    for i, (slot, prompt) in enumerate(zip(slots, prompts)):
        engine.reset(slot, plist[i])
        first = engine.extend(slot, prompt, chunk=chunk)
        res.tokens[i].append(first)
        if on_tokens:
            on_tokens(i, [first])
        if first in stop:
            res.finish[i] = "stop"
        elif max_new_tokens == 1:
            res.finish[i] = "length"

    while True:
        for i, slot in enumerate(slots):
            if not res.finish[i] and engine.room(slot) < 0:
                res.finish[i] = "capacity"
        live = [i for i in range(len(prompts)) if not res.finish[i]]
        if not live:
            return res
        active = torch.zeros(engine.batch, dtype=torch.bool)
        active[[slots[i] for i in live]] = True
        new, num = engine.step(active.to(engine.state.tokens.device))
        new_l, num_l = new.tolist(), num.tolist()   # the loop's one host sync per step
        engine.commit(num_l)
        res.steps += 1
        for i in live:
            slot, m = slots[i], num_l[slots[i]]
            res.slot_steps += 1
            res.step_tokens += m
            res.per_step.append(m)
            kept = []
            for t in new_l[slot][:m]:
                kept.append(t)
                if t in stop:
                    res.finish[i] = "stop"
                    break
                if len(res.tokens[i]) + len(kept) >= max_new_tokens:
                    res.finish[i] = "length"
                    break
            res.tokens[i].extend(kept)
            engine.rollback(slot, m - len(kept))
            if on_tokens:
                on_tokens(i, kept)
