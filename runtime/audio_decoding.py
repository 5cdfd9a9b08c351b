"""Decoding audio answers with the unified LLM: the chat framing ids and the audio-only constraint.

Step-Audio interleaves the two codebooks 2:3 — every 120 ms group is 2 linguistic then 3 semantic ids
(:mod:`voxcore.interleave`) — so the id at generated position ``i`` must come from the codebook of
its place ``i % 5`` in the group, and the answer may only end on a group boundary. A model trained on
that layout learns it; a random one (the ``tiny`` preset) does not, and the vocoder would refuse a
misplaced id. :class:`AudioPhaseConstraint` enforces it on the logits, as a filter by position:

* :class:`AudioOnlyLM` wraps the shared :class:`AudioLM` for one engine and masks the backbone's
  logits. The backbone logits are the ones the verifiers compare drafts against, so greedy MTP stays
  token-identical to plain greedy decoding and rejection sampling stays exact under the constraint.
* :class:`AudioOnlyDrafter` masks the MTP drafts the same way, only so that fewer drafts are wasted
  on ids the verifier would reject anyway.

The wrapper remembers the positions of the last forward (``logits`` does not receive them), so use
one wrapper per :class:`DecodeEngine`; the wrapped model's weights are shared, never copied. The
constraint's ``start`` holds one answer start per slot; a forward over some slots only (a prefill)
says which with :meth:`AudioPhaseConstraint.select` (`runtime.slot_loop` does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from runtime.drafter import DraftWindow, MTPDrafter
from runtime.model import AudioLM
from runtime.sampling import Sampler

LING_PER_GROUP, GROUP_SIZE = 2, 5  # Step-Audio's 2 linguistic + 3 semantic ids per 120 ms


@dataclass(frozen=True)
class AudioChatFormat:
    """Text ids that frame the turns of an audio conversation::

        user  <user audio ids>  end   assistant  <assistant audio ids>  end   ...   assistant

    Real Step-Audio checkpoints spell these with chat-template text tokens; the ``tiny`` preset has
    64 text ids and no text tokenizer, so three fixed ids stand in for them. ``end`` is also the
    token that stops an answer.
    """

    user: int = 1
    assistant: int = 2
    end: int = 3

    def check(self, text_vocab_size: int) -> None:
        ids = (self.user, self.assistant, self.end)
        if len(set(ids)) != 3 or not all(0 <= i < text_vocab_size for i in ids):
            raise ValueError(f"chat format ids {ids} must be 3 distinct text ids below {text_vocab_size}")


class AudioPhaseConstraint:
    """Which ids may follow at each position of an audio answer.

    ``start [B]`` is, per slot, the position of the answer's first audio id. A token predicted for
    position ``q >= start`` has phase ``(q - start) % 5``: phases 0-1 allow linguistic ids, 2-4
    semantic ids; ``end`` is allowed at phase 0 after at least one whole group.
    """

    def __init__(self, model: AudioLM, fmt: AudioChatFormat, batch: int = 1) -> None:
        cfg = model.config
        fmt.check(cfg.text_vocab_size)
        dev = next(model.parameters()).device
        allowed = torch.zeros(GROUP_SIZE, cfg.vocab_size, dtype=torch.bool, device=dev)  # [5, V]
        allowed[:LING_PER_GROUP, cfg.audio_offset:cfg.semantic_offset] = True
        allowed[LING_PER_GROUP:, cfg.semantic_offset:cfg.audio_end] = True
        self.allowed, self.end = allowed, fmt.end
        self.start = torch.zeros(batch, dtype=torch.long, device=dev)
        self._rows: range | None = None

    def admit(self, slot: int, start: int, constrained: bool = True) -> None:
        """A new answer in ``slot`` starts at ``start`` (every answer on this path is audio)."""
        if not constrained:
            raise ValueError("the dual-codebook audio path constrains every answer")
        self.start[slot] = start

    def select(self, rows: range | None) -> None:
        """The slots the next forwards cover (a one-slot prefill), or None for the whole batch."""
        self._rows = rows

    def mask(self, logits: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
        """logits [B, T, V] for tokens at positions target_pos [B, T] -> masked logits (no host sync)."""
        start = self.start if self._rows is None else self.start[self._rows.start:self._rows.stop]
        rel = target_pos - start[:, None]                                       # [B, T]
        ok = self.allowed[rel % GROUP_SIZE]                                     # [B, T, V] (a copy)
        ok[..., self.end] = (rel % GROUP_SIZE == 0) & (rel > 0)                 # end: whole groups only
        return logits.masked_fill(~ok, float("-inf"))


class AudioOnlyLM(nn.Module):
    """The shared model seen through :class:`AudioPhaseConstraint` (one wrapper per engine).

    ``forward`` records the positions it ran at; ``logits`` masks each hidden state's prediction
    for the *next* position. Everything else is the wrapped model's.
    """

    def __init__(self, model: AudioLM, constraint: AudioPhaseConstraint) -> None:
        super().__init__()
        self.inner, self.constraint = model, constraint
        self._positions: torch.Tensor | None = None

    @property
    def config(self):
        return self.inner.config

    @property
    def model(self):
        """The wrapped backbone (its embedding table: a prefill with input vectors reads it)."""
        return self.inner.model

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:
            b, t = tokens.shape
            positions = torch.arange(t, device=tokens.device).expand(b, t)
        self._positions = positions
        if inputs_embeds is None:
            return self.inner(tokens, positions, cache)
        return self.inner(tokens, positions, cache, inputs_embeds=inputs_embeds)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, D] from the last forward, or [B, D] = its last position -> masked logits."""
        assert self._positions is not None, "logits() must follow a forward()"
        last = hidden.dim() == 2
        pos = self._positions[:, -1:] if last else self._positions
        if not last and pos.shape[1] != hidden.shape[1]:
            raise ValueError(f"hidden has {hidden.shape[1]} positions, the last forward ran {pos.shape[1]}")
        out = self.constraint.mask(self.inner.logits(hidden if not last else hidden[:, None]), pos + 1)
        return out[:, 0] if last else out

    def mtp_forward(self, *args, **kwargs) -> torch.Tensor:
        return self.inner.mtp_forward(*args, **kwargs)

    def mtp_logits(self, depth: int, g: torch.Tensor) -> torch.Tensor:
        return self.inner.mtp_logits(depth, g)


class AudioOnlyDrafter(MTPDrafter):
    """MTP drafts under the same constraint: draft ``depth`` (0-based) lands at ``pending + depth + 1``."""

    def __init__(self, constraint: AudioPhaseConstraint) -> None:
        self.constraint = constraint

    def choose(self, depth: int, logits: torch.Tensor, sampler: Sampler, win: DraftWindow,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        target = (win.pending + depth + 1)[:, None]                              # [B, 1]
        masked = self.constraint.mask(logits[:, None], target)[:, 0]             # [B, V]
        return super().choose(depth, masked, sampler, win, generator)
