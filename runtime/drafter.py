"""Drafters: propose the next K tokens of every slot after a verify step (or a prompt).

A drafter writes draft ``i`` (1-based) of slot ``b`` to ``state.tokens[b, pending[b] + i]`` and,
when sampling, its distribution ``q_i`` to ``state.draft_probs[b, i-1]``; the next verify step reads
them from there. Any drafter keeps greedy decoding exact and sampling unbiased, because the verifier
checks every draft against the backbone — a drafter only changes how many tokens a step yields.

:class:`MTPDrafter` is the model's own MTP chain. Tests plug in others to force acceptance patterns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from runtime.model import AudioLM
from runtime.sampling import Sampler
from runtime.state import DecodeState


@dataclass
class DraftWindow:
    """What a drafter gets after a verify step (or a prompt) for the slots ``slots``.

    hidden [B, W, D]: backbone states at window positions pos [B, W]; the proposal position
    (n - 1, whose next token is the pending one) is window index last [B]; pending [B] = n;
    active [B] bool or None (paused slots must keep their drafts; :func:`write_draft` does that).
    """

    hidden: torch.Tensor
    pos: torch.Tensor
    last: torch.Tensor
    pending: torch.Tensor
    active: torch.Tensor | None
    slots: range


class Drafter(Protocol):
    def __call__(self, model: AudioLM, st: DecodeState, sampler: Sampler, win: DraftWindow,
                 generator: torch.Generator | None) -> None: ...


def write_draft(st: DecodeState, depth: int, draft: torch.Tensor, q: torch.Tensor | None,
                pending: torch.Tensor, active: torch.Tensor | None) -> None:
    """Store draft [B] (and q [B, V]) for 0-based ``depth``; paused slots keep theirs bit for bit."""
    dpos = (pending + depth + 1).clamp(max=st.capacity - 1)[:, None]                 # [B, 1]
    if active is not None:
        draft = torch.where(active, draft, st.tokens.gather(1, dpos)[:, 0])
        if q is not None:
            q = torch.where(active[:, None], q, st.draft_probs[:, depth])
    st.tokens.scatter_(1, dpos, draft[:, None])
    if q is not None:
        st.draft_probs[:, depth].copy_(q)


class MTPDrafter:
    """Run MTP depths 1..K over the window, chaining hidden states (DeepSeek-V3 / Step 3.5 style).

    The window covers every position whose MTP cache entry may be stale: depth k's entries at
    ``n-k+1 .. n-1`` were computed from drafts that a verify step may have rejected. Each depth
    re-writes its whole window (static width) and drafts from the proposal position.
    """

    def __call__(self, model: AudioLM, st: DecodeState, sampler: Sampler, win: DraftWindow,
                 generator: torch.Generator | None) -> None:
        cap, (b, _, d) = st.capacity, win.hidden.shape
        pos, g = win.pos, win.hidden
        for depth in range(st.n_draft):
            # Depth k at position j reads t_{j+k}: committed, an earlier depth's draft, or stale.
            tok = st.tokens.gather(1, (pos + depth + 1).clamp(max=cap - 1))         # [B, W]
            g = model.mtp_forward(depth, g, tok, pos, st.mtp_kv.layer(depth))        # [B, W, D]
            g_last = g.gather(1, win.last[:, None, None].expand(b, 1, d))            # [B, 1, D]
            logits = model.mtp_logits(depth, g_last)[:, 0]                           # [B, V]
            draft, q = self.choose(depth, logits, sampler, win, generator)
            write_draft(st, depth, draft, q, win.pending, win.active)

    def choose(self, depth: int, logits: torch.Tensor, sampler: Sampler, win: DraftWindow,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pick draft [B] (and its distribution q [B, V] when sampling) from draft logits [B, V]."""
        if sampler.all_greedy:
            return logits.argmax(-1), None
        q = sampler.probs(logits[:, None])[:, 0]
        return Sampler.sample(q, generator), q
