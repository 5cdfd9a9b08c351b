"""Step-Audio-EditX flow: the Step-Audio 2 flow fed with dual-codebook pairs (v1 SPEC §9).

EditX's vocoder flow is code-identical to Step-Audio 2's (:mod:`vocoder.step_audio2.flow`, loaded by the same
:func:`~vocoder.step_audio2.flow_loader.load_flow`) except for its input embedding:

1. :func:`mixed_to_pairs` (§9.1): the LLM's mixed stream (2 linguistic + 3 semantic values per 120 ms group,
   values = id - 65536) becomes 3 time-aligned 25 Hz rows per group, (linguistic or PAD 1024, 1025 + semantic code).
   A length that is not a multiple of 5 is completed with the last items of [0, 0, 0, 1024, 1024, 1024].
2. :class:`DualCodebookEmbedding` (§9.2): one table of 5121 x D/2 (0..1023 linguistic, 1024 PAD, 1025..5120
   semantic); a row is concat(E[col0], E[col1]).
3. The prompt mel is nearest-interpolated to 2 frames per prompt row (§9.3); the output has 2 frames per target row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vocoder.step_audio2.flow import StepAudio2Flow

GROUP = 5  # mixed values per 120 ms group: a0 a1 s0 s1 s2
LING_CODES = 1024
PAD_ROW = 1024  # the linguistic column of every third row
SEMANTIC_BASE = 1025  # table row of semantic code 0
GROUP_PADDING = (0, 0, 0, LING_CODES, LING_CODES, LING_CODES)  # its last (5 - len % 5) items complete a group


def mixed_to_pairs(mixed: torch.Tensor) -> torch.Tensor:
    """(B, L) or (L,) mixed values (linguistic 0..1023, semantic 1024..5119) -> (B, 3·ceil(L/5), 2) pairs."""
    squeeze = mixed.dim() == 1
    mixed = (mixed[None] if squeeze else mixed).long()
    rest = mixed.shape[1] % GROUP
    if rest:
        pad = torch.tensor(GROUP_PADDING[-(GROUP - rest):], dtype=torch.long, device=mixed.device)
        mixed = torch.cat([mixed, pad.expand(mixed.shape[0], -1)], dim=1)
    groups = mixed.view(mixed.shape[0], -1, GROUP)
    ling = torch.stack([groups[..., 0], groups[..., 1], torch.full_like(groups[..., 0], PAD_ROW)], dim=-1)
    sem = groups[..., 2:] - LING_CODES + SEMANTIC_BASE
    pairs = torch.stack([ling, sem], dim=-1).view(mixed.shape[0], -1, 2)
    return pairs[0] if squeeze else pairs


class DualCodebookEmbedding(nn.Module):
    """(B, T, 2) pairs -> (B, T, D): one shared table of ``vocab_size`` x D/2, the two lookups concatenated."""

    def __init__(self, vocab_size: int = 5121, input_size: int = 512) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, input_size // 2)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embedding(pairs[..., 0]), self.embedding(pairs[..., 1])], dim=-1)


def fit_prompt_mel(mel: torch.Tensor, rows: int, frames_per_row: int = 2) -> torch.Tensor:
    """(B, T, 80) prompt mel -> (B, frames_per_row·rows, 80) by nearest interpolation along time (§9.3)."""
    return F.interpolate(mel.transpose(1, 2), size=frames_per_row * rows, mode="nearest").transpose(1, 2)


@torch.inference_mode()
def editx_inference(flow: StepAudio2Flow, target_mixed: torch.Tensor, prompt_mixed: torch.Tensor,
                    prompt_mel: torch.Tensor, spk_emb: torch.Tensor, noise: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Offline EditX flow: mixed values (1, L) of the target and the prompt, the prompt's mel (1, T, 80) at any
    length, spk_emb (1, 192) -> mel (1, 80, 2·target rows)."""
    if not isinstance(flow.input_embedding, DualCodebookEmbedding):
        raise TypeError("editx_inference needs a flow built with a DualCodebookEmbedding (the EditX config)")
    prompt_pairs, target_pairs = mixed_to_pairs(prompt_mixed), mixed_to_pairs(target_mixed)
    mel = fit_prompt_mel(prompt_mel, prompt_pairs.shape[1], flow.frames_per_code)
    return flow.inference(target_pairs, prompt_pairs, mel, spk_emb, noise=noise)
