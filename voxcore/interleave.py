"""Step-Audio's 2:3 interleave of the two codebooks into LLM token ids, and the inverse split.

Each 120 ms of audio is one *group*: 2 linguistic codes (16.7 Hz, 1024 entries) then 3 semantic codes
(25 Hz, 4096 entries). In the LLM vocabulary audio ids come after the text ids:
linguistic code c -> `offset + c`, semantic code c -> `offset + n_linguistic + c` (Step-Audio: offset 65536).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LING_PER_GROUP = 2
SEM_PER_GROUP = 3
GROUP_SIZE = LING_PER_GROUP + SEM_PER_GROUP
GROUP_MS = 120
GROUP_SAMPLES_16K = 16000 * GROUP_MS // 1000  # 1920


@dataclass(frozen=True)
class AudioTokenLayout:
    """Where the audio codes sit in the LLM vocabulary."""

    offset: int = 65536  # number of text ids before the first audio id
    n_linguistic: int = 1024
    n_semantic: int = 4096

    def __post_init__(self) -> None:
        if self.offset < 0 or self.n_linguistic <= 0 or self.n_semantic <= 0:
            raise ValueError(f"bad layout {self}: offset >= 0 and positive codebook sizes required")

    @property
    def semantic_offset(self) -> int:
        return self.offset + self.n_linguistic

    @property
    def vocab_size(self) -> int:
        """Text ids + both audio codebooks."""
        return self.offset + self.n_linguistic + self.n_semantic

    def is_audio(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.offset) & (ids < self.vocab_size)


STEP_AUDIO_LAYOUT = AudioTokenLayout()


def interleave(linguistic: torch.Tensor, semantic: torch.Tensor,
               layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> torch.Tensor:
    """Codes -> LLM ids. linguistic [..., 2G], semantic [..., 3G] -> ids [..., 5G]."""
    groups = linguistic.shape[-1] // LING_PER_GROUP
    if linguistic.shape[-1] != LING_PER_GROUP * groups or semantic.shape[-1] != SEM_PER_GROUP * groups:
        raise ValueError(f"need 2G linguistic and 3G semantic codes, got {linguistic.shape[-1]} and "
                         f"{semantic.shape[-1]}")
    if linguistic.numel() and (linguistic.min() < 0 or linguistic.max() >= layout.n_linguistic):
        raise ValueError(f"linguistic codes must be in [0, {layout.n_linguistic})")
    if semantic.numel() and (semantic.min() < 0 or semantic.max() >= layout.n_semantic):
        raise ValueError(f"semantic codes must be in [0, {layout.n_semantic})")
    batch = linguistic.shape[:-1]
    ling = (linguistic + layout.offset).reshape(*batch, groups, LING_PER_GROUP)
    sem = (semantic + layout.semantic_offset).reshape(*batch, groups, SEM_PER_GROUP)
    return torch.cat([ling, sem], dim=-1).reshape(*batch, groups * GROUP_SIZE)


def split(ids: torch.Tensor, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM ids [..., 5G] -> (linguistic [..., 2G], semantic [..., 3G]) codes.

    Raises if an id is not an audio id of the right codebook for its place in the group, so a model
    that emits a misplaced token is caught here rather than voiced as noise.
    """
    if ids.shape[-1] % GROUP_SIZE:
        raise ValueError(f"{ids.shape[-1]} ids is not a whole number of {GROUP_SIZE}-id groups")
    batch, groups = ids.shape[:-1], ids.shape[-1] // GROUP_SIZE
    grouped = ids.reshape(*batch, groups, GROUP_SIZE)
    ling = grouped[..., :LING_PER_GROUP] - layout.offset
    sem = grouped[..., LING_PER_GROUP:] - layout.semantic_offset
    if ling.numel() and (ling.min() < 0 or ling.max() >= layout.n_linguistic):
        raise ValueError("an id in a linguistic position is not a linguistic audio id")
    if sem.numel() and (sem.min() < 0 or sem.max() >= layout.n_semantic):
        raise ValueError("an id in a semantic position is not a semantic audio id")
    return ling.reshape(*batch, groups * LING_PER_GROUP), sem.reshape(*batch, groups * SEM_PER_GROUP)


def split_whole_groups(ids: torch.Tensor, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a stream: split the whole groups of ids [..., N] and return the incomplete tail as well.

    Returns (linguistic [..., 2G], semantic [..., 3G], rest [..., N - 5G]) with G = N // 5.
    """
    whole = ids.shape[-1] - ids.shape[-1] % GROUP_SIZE
    ling, sem = split(ids[..., :whole], layout)
    return ling, sem, ids[..., whole:]
