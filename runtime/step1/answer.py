"""The shape of a Step-Audio-TTS-3B answer, as a per-slot constraint on the Step1 logits (SPEC step_audio_v1 §5, §6).

After the TTS prompt's last ``[4] enc("assistant\\n")`` the model speaks dual-codebook ids in the 2:3 interleave:
generated position ``i`` (0-based from the first answer id) holds a linguistic id (65536 + c, c < 1024) when
``i % 5 in (0, 1)`` and a semantic id (66560 + c, c < 4096) otherwise; the answer ends with the end-of-turn id (3,
the config's ``eos_token_id``), allowed only on a group boundary after at least one whole group, so the vocoder is
always handed whole groups. A trained checkpoint already follows this; a random one (the tiny test checkpoint) does
not. :class:`runtime.audio_decoding.AudioPhaseConstraint` does the same phase mask for our own layout, but reads its
ids from our AudioLM config and refuses free slots; this one takes the v1 ids directly.

The reference also samples through ``RepetitionAwareLogitsProcessor`` (SPEC §6): when the last token occurs more than
once among the last 10, its logit is set to −inf. With :meth:`attach` given the engine's token record
(``DecodeState.tokens`` [B, capacity], where every position before the one being predicted is already written — the
prompt on prefill, the pending token on a step) the mask applies that rule too, on the device, with no host sync.

A slot can run unconstrained (``admit(slot, start, False)``); the repetition rule then does not apply either.
"""

from __future__ import annotations

import torch

from voxcore.interleave import STEP_AUDIO_LAYOUT

GROUP, LINGUISTIC_PER_GROUP = 5, 2
REPETITION_WINDOW = 10  # RepetitionAwareLogitsProcessor: the last 10 tokens, "more than once" = ratio > 0.1


class DualCodebookAnswerConstraint:
    """``start [B]``: each slot's first answer position; ``spoken [B]``: whether the slot is a constrained answer."""

    def __init__(self, vocab_size: int, end_id: int, batch: int, device: str | torch.device = "cpu",
                 repetition_window: int = REPETITION_WINDOW) -> None:
        layout = STEP_AUDIO_LAYOUT
        ling0 = layout.offset
        sem0, sem_end = ling0 + layout.n_linguistic, ling0 + layout.n_linguistic + layout.n_semantic
        if sem_end > vocab_size or not 0 <= end_id < ling0:
            raise ValueError(f"the v1 audio ids {ling0}..{sem_end - 1} must fit the vocabulary ({vocab_size}) and the "
                             f"end id ({end_id}) must be a text id")
        allowed = torch.zeros(GROUP, vocab_size, dtype=torch.bool, device=device)
        allowed[:LINGUISTIC_PER_GROUP, ling0:sem0] = True
        allowed[LINGUISTIC_PER_GROUP:, sem0:sem_end] = True
        self.allowed, self.end_id, self.window = allowed, end_id, repetition_window
        self.first_audio, self.audio_end = ling0, sem_end
        self.start = torch.zeros(batch, dtype=torch.long, device=device)
        self.spoken = torch.zeros(batch, dtype=torch.bool, device=device)
        self.history: torch.Tensor | None = None
        self._rows: range | None = None

    def attach(self, tokens: torch.Tensor) -> None:
        """The engine's token record [B, capacity] (read, never written): enables the repetition rule."""
        self.history = tokens

    def admit(self, slot: int, start: int, constrained: bool) -> None:
        self.start[slot] = start
        self.spoken[slot] = constrained

    def select(self, rows: range | None) -> None:
        """The slots the next forwards cover (a one-slot prefill), or None for the whole batch."""
        self._rows = rows

    def is_audio(self, token_id: int) -> bool:
        return self.first_audio <= token_id < self.audio_end

    def mask(self, logits: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
        """logits [B, T, V] for ids at positions target_pos [B, T] -> masked logits (no host sync)."""
        rows = self._rows or range(0, self.start.shape[0])
        start, spoken = self.start[rows.start:rows.stop], self.spoken[rows.start:rows.stop]
        rel = (target_pos - start[:, None]).clamp(min=0)                               # [B, T]
        ok = self.allowed[rel % GROUP]                                                 # [B, T, V] (a copy)
        ok[..., self.end_id] = (rel % GROUP == 0) & (rel > 0)                          # whole groups only
        if self.history is not None:
            ok &= ~self._repeated(self.history[rows.start:rows.stop], target_pos, logits.shape[-1])
        ok |= ~spoken[:, None, None]
        return logits.masked_fill(~ok, float("-inf"))

    def _repeated(self, history: torch.Tensor, target_pos: torch.Tensor, vocab: int) -> torch.Tensor:
        """[B, T, V] True at the last token where it occurs more than once among the last ``window`` tokens."""
        offsets = torch.arange(1, self.window + 1, device=target_pos.device)
        pos = target_pos[..., None] - offsets                                          # [B, T, W], newest first
        valid = pos >= 0
        seen = history.gather(1, pos.clamp(min=0).flatten(1)).view(pos.shape)         # [B, T, W]
        last = seen[..., 0]
        count = ((seen == last[..., None]) & valid).sum(-1)                            # [B, T]
        full = valid.all(-1)                                                           # "once >= 10 tokens exist"
        hit = torch.zeros(*target_pos.shape, vocab, dtype=torch.bool, device=target_pos.device)
        hit.scatter_(2, last[..., None], ((count > 1) & full)[..., None])
        return hit
