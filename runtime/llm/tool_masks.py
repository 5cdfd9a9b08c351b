"""The torch engine's constrained decoding: the same llguidance grammar llama.cpp runs, as a token mask per slot.

:class:`SlotGrammars` keeps one ``llguidance.LLMatcher`` per batch slot whose request carries an
:class:`runtime.llm.tool_constraint.OutputConstraint`. It is applied from outside the runtime's model, the
way the torch engine applies length buckets: :meth:`SlotGrammars.wrap_logits` wraps the model's ``logits``
so that every token the :class:`runtime.engine.DecodeEngine` samples (prefill and steps, greedy or not) is
one the grammar allows — disallowed tokens get ``-inf`` before argmax / softmax. The engine thread feeds
each emitted token back (:meth:`advance`), so the next mask follows the text so far.

Limits: plain decoding only (MTP drafts would be proposed and verified outside the mask), and the
``llguidance`` package must be installed; without it the torch engine decodes unconstrained, as before.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from runtime.llm.tool_constraint import OutputConstraint

log = logging.getLogger(__name__)


def available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


class SlotGrammars:
    """Per-slot grammar matchers over one tokenizer (``TextTokenizer``) and the logits hook that applies them."""

    def __init__(self, tokenizer, batch: int) -> None:
        import llguidance

        # The tokenizer's own tokenizer.json; its end-of-turn ids are the "EOS" a finished grammar allows.
        self.lltok = llguidance.LLTokenizer(tokenizer.tok.to_str(), n_vocab=tokenizer.vocab_size,
                                            eos_token=list(tokenizer.stop_ids))
        self.n_vocab = self.lltok.vocab_size
        self.stop_ids = frozenset(tokenizer.stop_ids)
        self.matchers: list = [None] * batch
        #: the slot whose prompt :meth:`DecodeEngine.extend` is prefilling (its logits come one row per call)
        self.prefilling: int | None = None

    def start(self, slot: int, constraint: OutputConstraint | None) -> None:
        """Slot ``slot`` begins a request decoded under ``constraint`` (None: unconstrained)."""
        import llguidance

        self.matchers[slot] = None
        if constraint is None:
            return
        matcher = llguidance.LLMatcher(self.lltok, constraint.lark(), log_level=0)
        if matcher.is_error():
            # A schema llguidance cannot compile: decode unconstrained, as llama.cpp's engine does.
            log.warning("output grammar refused (%s); decoding this request unconstrained", matcher.get_error())
            return
        self.matchers[slot] = matcher

    def advance(self, slot: int, tokens: Sequence[int]) -> None:
        """``tokens`` were emitted for ``slot`` (a stop token ends what is fed)."""
        matcher = self.matchers[slot]
        if matcher is None:
            return
        for t in tokens:
            if t in self.stop_ids:
                return
            if not matcher.consume_token(t):
                log.warning("grammar rejected token %d (%s); the rest of this request is unconstrained",
                            t, matcher.get_error())
                self.matchers[slot] = None
                return

    def stop(self, slot: int) -> None:
        self.matchers[slot] = None

    @property
    def active(self) -> bool:
        return any(m is not None for m in self.matchers)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [S, V] (prefill of :attr:`prefilling`) or [B, T, V] (a step, row b = slot b), masked."""
        if not self.active:
            return logits
        if logits.dim() == 2:
            rows = [(self.prefilling, logits)] if self.prefilling is not None else []
        else:
            rows = [(b, logits[b]) for b in range(logits.shape[0])]
        for slot, row in rows:
            matcher = self.matchers[slot] if slot is not None and slot < len(self.matchers) else None
            if matcher is None:
                continue
            allowed = torch.frombuffer(bytearray(matcher.compute_logit_bias()), dtype=torch.uint8)[:self.n_vocab] > 0
            banned = torch.ones(row.shape[-1], dtype=torch.bool, device=row.device)
            banned[:allowed.numel()] = ~allowed.to(row.device)
            row.masked_fill_(banned, float("-inf"))       # row is a view: this writes into `logits`
        return logits

    def wrap_logits(self, logits_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def masked_logits(h: torch.Tensor) -> torch.Tensor:
            return self.mask(logits_fn(h))
        return masked_logits
