"""Per-request sampling options, logit filters and the batched sampler.

Each slot carries its own :class:`SamplingParams`; the :class:`Sampler` keeps them as ``[B]`` tensors
so one call filters a whole batch without host syncs. Filters are small callables
(``logits [B, T, V] -> logits``) applied in order, so a new one (repetition penalty, audio-only mask
...) is one class, not a branch in the decode loop.

Greedy is ``temperature == 0``; its "distribution" is the one-hot argmax, which is what makes greedy
rows exact inside the rejection-sampling verifier too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples. ``temperature=0`` is greedy; ``top_k=0`` and ``top_p=1`` are off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingParams()


class LogitFilter(Protocol):
    """Transforms logits [B, T, V] given the sampler's per-slot parameter tensors."""

    def __call__(self, logits: torch.Tensor, s: "Sampler") -> torch.Tensor: ...


class Temperature:
    """Divide by the slot's temperature (greedy rows use 1; they become one-hot later anyway)."""

    def __call__(self, logits: torch.Tensor, s: "Sampler") -> torch.Tensor:
        t = torch.where(s.greedy_rows, torch.ones_like(s.temperature), s.temperature)
        return logits / t[:, None, None].to(logits.dtype)


class TopK:
    """Keep the ``top_k`` largest logits of each row (0 = keep all)."""

    def __call__(self, logits: torch.Tensor, s: "Sampler") -> torch.Tensor:
        if not s.any_top_k:
            return logits
        v = logits.shape[-1]
        k = torch.where(s.top_k > 0, s.top_k.clamp(max=v), torch.full_like(s.top_k, v))  # [B]
        kth = logits.sort(dim=-1, descending=True).values.gather(
            -1, (k - 1)[:, None, None].expand(*logits.shape[:2], 1))                     # [B, T, 1]
        return logits.masked_fill(logits < kth, float("-inf"))


class TopP:
    """Nucleus filter: keep the smallest set of tokens whose probability reaches ``top_p``."""

    def __call__(self, logits: torch.Tensor, s: "Sampler") -> torch.Tensor:
        if not s.any_top_p:
            return logits
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass *before* it already reaches top_p (the top token always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= s.top_p[:, None, None].to(cum.dtype)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


DEFAULT_FILTERS: tuple[LogitFilter, ...] = (Temperature(), TopK(), TopP())


class Sampler:
    """Batched sampler over ``batch`` slots, each with its own :class:`SamplingParams`."""

    def __init__(self, batch: int, device: torch.device | str = "cpu",
                 filters: Sequence[LogitFilter] = DEFAULT_FILTERS) -> None:
        self.filters = tuple(filters)
        self.params: list[SamplingParams] = [GREEDY] * batch
        self.temperature = torch.zeros(batch, device=device)
        self.top_k = torch.zeros(batch, dtype=torch.long, device=device)
        self.top_p = torch.ones(batch, device=device)
        self.greedy_rows = torch.ones(batch, dtype=torch.bool, device=device)
        self._refresh_flags()

    def set(self, slots: int | range, params: SamplingParams) -> None:
        """Set the options of one slot or a range (host-side bookkeeping happens here, not in the step)."""
        sl = slice(slots, slots + 1) if isinstance(slots, int) else slice(slots.start, slots.stop)
        n = sl.stop - sl.start
        self.params[sl] = [params] * n
        self.temperature[sl] = params.temperature
        self.top_k[sl] = params.top_k
        self.top_p[sl] = params.top_p
        self.greedy_rows[sl] = params.greedy
        self._refresh_flags()

    def view(self, start: int, stop: int) -> "Sampler":
        """The sampler of slots ``[start, stop)`` only (tensors are views; used to extend one slot)."""
        out = Sampler.__new__(Sampler)
        out.filters, out.params = self.filters, self.params[start:stop]
        out.temperature, out.top_k = self.temperature[start:stop], self.top_k[start:stop]
        out.top_p, out.greedy_rows = self.top_p[start:stop], self.greedy_rows[start:stop]
        out._refresh_flags()
        return out

    def _refresh_flags(self) -> None:
        # Host-side flags decided once per configuration, so the step never inspects tensors.
        self.all_greedy = all(p.greedy for p in self.params)
        self.any_top_k = any(p.top_k > 0 and not p.greedy for p in self.params)
        self.any_top_p = any(p.top_p < 1.0 and not p.greedy for p in self.params)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, T, V] -> filtered distributions [B, T, V] (one-hot argmax on greedy rows)."""
        onehot = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        if self.all_greedy:
            return onehot
        x = logits
        for f in self.filters:
            x = f(x, self)
        return torch.where(self.greedy_rows[:, None, None], onehot, x.softmax(-1))

    @staticmethod
    def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Draw one token per row from probs [..., V] -> [...] (exponential race, no host sync).

        argmax(p / E) with E ~ Exp(1) picks index i with probability p_i; zero-probability tokens
        can never win, so one-hot rows return their argmax exactly.
        """
        e = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_min(1e-30)
        return (probs / e).argmax(-1)
