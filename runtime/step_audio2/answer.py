"""The shape of a Step-Audio 2 spoken answer, as a per-slot constraint on the logits.

After ``<tts_start>`` the model speaks in the 1:4 text:audio interleave (SPEC §1.2, §2 "TA4"): generated
position ``i`` (0-based from the first answer id) is a text-side id when ``i % 5 == 0`` — a text id, ``<tts_pad>``
once the text has run out, ``<tts_end>`` or ``<|EOT|>`` to finish — and an audio id (``<audio_0>`` ..
``<audio_6561>``) otherwise. A trained checkpoint already follows this; a random one (the tiny test checkpoint)
does not, and without the constraint it would almost never produce speech codes. Masking by position keeps
greedy MTP token-identical (the verifier compares drafts against the masked backbone logits, as
:mod:`runtime.audio_decoding` does for the dual-codebook layout).

A slot can also run unconstrained (ASR, text chat on the same loaded model): ``admit(slot, start, False)``.
"""

from __future__ import annotations

import torch

from runtime.step_audio2.tokens import SpecialTokens

PERIOD = 5  # one text-side id, then four audio ids


class SpeechAnswerConstraint:
    """``start [B]`` answer start per slot; ``spoken [B]`` whether the slot's answer is a TA4 spoken answer."""

    def __init__(self, special: SpecialTokens, vocab_size: int, batch: int, device: str | torch.device = "cpu"):
        allowed = torch.zeros(PERIOD, vocab_size, dtype=torch.bool, device=device)
        allowed[0, :special.text_vocab_size] = True
        allowed[0, [special.tts_pad, special.tts_end, special.eot]] = True
        allowed[1:, special.audio_first:special.audio_pad + 1] = True
        self.allowed = allowed
        self.start = torch.zeros(batch, dtype=torch.long, device=device)
        self.spoken = torch.zeros(batch, dtype=torch.bool, device=device)
        self._rows: range | None = None

    def admit(self, slot: int, start: int, constrained: bool) -> None:
        self.start[slot] = start
        self.spoken[slot] = constrained

    def select(self, rows: range | None) -> None:
        """The slots the next forwards cover (a one-slot prefill), or None for the whole batch."""
        self._rows = rows

    def mask(self, logits: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
        """logits [B, T, V] for ids at positions target_pos [B, T] -> masked logits (no host sync)."""
        rows = self._rows
        start = self.start if rows is None else self.start[rows.start:rows.stop]
        spoken = self.spoken if rows is None else self.spoken[rows.start:rows.stop]
        rel = (target_pos - start[:, None]).clamp(min=0)                          # [B, T]
        ok = self.allowed[rel % PERIOD] | ~spoken[:, None, None]                  # [B, T, V]
        return logits.masked_fill(~ok, float("-inf"))
