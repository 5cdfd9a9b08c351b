"""Step-Audio v1's 2:3 interleave of the two code streams, as the reference does it (SPEC step_audio_v1 §5).

The linguistic stream (vq02, 16.67 Hz, 1024 codes) and the semantic stream (vq06, 25 Hz, 4096 codes) of one
utterance rarely have exactly 2:3 lengths. The reference (``wav2token`` and ``merge_vq0206_to_token_str``)
emits G = min(n02 // 2, n06 // 3) groups [a0, a1, s0, s1, s2] and **drops** the leftover codes of either
stream; :func:`interleave_codes` does the same and then uses the shared group layout of
:mod:`voxcore.interleave` (linguistic c -> 65536 + c, semantic c -> 65536 + 1024 + c).

Three forms of the same sequence appear in Step-Audio:

* LLM ids (TTS-3B prompts, LLM output): :func:`interleave_codes` / :func:`split_ids`;
* the audio-token string ``<audio_N>...`` EditX writes into its text prompts, N = c or 1024 + c
  (:func:`audio_token_string` / :func:`parse_audio_token_string`, which maps ``<audio_N>`` -> 65536 + N as
  the reference's ``get_audio_tokens`` does);
* "mixed values" id - 65536 (0..1023 linguistic, 1024..5119 semantic), the v1 flow's input
  (:func:`to_mixed` / :func:`from_mixed`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from voxcore.interleave import LING_PER_GROUP, SEM_PER_GROUP, STEP_AUDIO_LAYOUT, AudioTokenLayout, interleave, split

Codes = Sequence[int] | torch.Tensor

_AUDIO_TOKEN = re.compile(r"<audio_(\d+)>")


def group_count(n_linguistic: int, n_semantic: int) -> int:
    """Whole 2 + 3 groups the two streams fill together; the rest of either stream is dropped."""
    return min(n_linguistic // LING_PER_GROUP, n_semantic // SEM_PER_GROUP)


def _as_codes(codes: Codes) -> torch.Tensor:
    return codes.long() if isinstance(codes, torch.Tensor) else torch.tensor(list(codes), dtype=torch.long)


def _whole_groups(vq02: Codes, vq06: Codes) -> tuple[torch.Tensor, torch.Tensor]:
    """Both streams cut to the G groups the reference emits (along the last dimension)."""
    ling, sem = _as_codes(vq02), _as_codes(vq06)
    groups = group_count(ling.shape[-1], sem.shape[-1])
    return ling[..., :LING_PER_GROUP * groups], sem[..., :SEM_PER_GROUP * groups]


def interleave_codes(vq02: Codes, vq06: Codes, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> torch.Tensor:
    """Linguistic codes [..., n02] and semantic codes [..., n06] -> LLM ids [..., 5G], leftovers dropped.

    Raises ValueError for a code outside its codebook (a wrong stream is caught here, not voiced as noise).
    """
    ling, sem = _whole_groups(vq02, vq06)
    return interleave(ling, sem, layout)


def split_ids(ids: Codes, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM ids [..., 5G] -> (linguistic [..., 2G], semantic [..., 3G]) codes, the inverse of
    :func:`interleave_codes` on what it kept. Raises ValueError for a partial group or an id that is not an
    audio id of the codebook its place in the group calls for."""
    return split(_as_codes(ids), layout)


def audio_token_string(vq02: Codes, vq06: Codes, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> str:
    """``merge_vq0206_to_token_str``: ``<audio_N>`` per code in the interleaved order, no separators, with
    N = c (linguistic) or 1024 + c (semantic) and the same G groups as :func:`interleave_codes`."""
    ids = interleave_codes(vq02, vq06, layout)
    if ids.dim() != 1:
        raise ValueError(f"audio_token_string takes one utterance, got codes of shape {tuple(ids.shape)}")
    return "".join(f"<audio_{n}>" for n in (ids - layout.offset).tolist())


def parse_audio_token_string(text: str, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> torch.Tensor:
    """``<audio_N>...`` -> LLM ids 65536 + N [L] (``get_audio_tokens``). Raises ValueError for any text that
    is not an ``<audio_N>`` token or an N beyond both codebooks."""
    pieces = _AUDIO_TOKEN.findall(text)
    if "".join(f"<audio_{n}>" for n in pieces) != text:
        raise ValueError("text holds something other than <audio_N> tokens")
    values = torch.tensor([int(n) for n in pieces], dtype=torch.long)
    if values.numel() and values.max() >= layout.n_linguistic + layout.n_semantic:
        raise ValueError(f"<audio_N> with N >= {layout.n_linguistic + layout.n_semantic} is no audio code")
    return from_mixed(values, layout)


def to_mixed(ids: Codes, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> torch.Tensor:
    """LLM ids -> mixed values id - 65536 (the v1 flow's input). Like the reference, every id is shifted:
    non-audio ids are not filtered here (they come out negative or >= 5120)."""
    return _as_codes(ids) - layout.offset


def from_mixed(values: Codes, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> torch.Tensor:
    """Mixed values (0..1023 linguistic, 1024..5119 semantic) -> LLM ids."""
    return _as_codes(values) + layout.offset
