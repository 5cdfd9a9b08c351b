"""Step-Audio 2 token ids, read from the checkpoint's own tokenizer files; the text tokenizer; TA4 and output parsing.

Golden SPEC.md §2/§14: only ``<audio_start>`` = 151688 and ``<audio_0>`` = 151696 are certain from the reference
code (the rest are third-party or unknown). So no id is hard-coded here: :class:`SpecialTokens` looks every needed
token up *by content* in ``tokenizer_config.json`` (``added_tokens_decoder``) and ``tokenizer.json``
(``added_tokens``), checks the two certain ids and the pad ``<audio_6561>`` = 151696 + 6561, and raises
:class:`TokenizerFilesError` naming the files when a token is absent or the files disagree — never a guess.

Output parsing (§2): ids < 151688 are text, ids >= 151696 are audio (code = id - 151696); ``<tts_pad>`` and
``<audio_6561>`` are dropped; what lies between ``<tts_start>`` and ``<tts_end>`` is the spoken part.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from runtime.step_audio2.config import AUDIO_OFFSET, N_AUDIO_CODES, TEXT_VOCAB_SIZE

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"

# field name -> token content, as the official tokenizer spells them (SPEC §2).
TOKEN_CONTENTS = {
    "bot": "<|BOT|>",
    "eot": "<|EOT|>",
    "audio_start": "<audio_start>",
    "audio_end": "<audio_end>",
    "audio_patch": "<audio_patch>",
    "tts_start": "<tts_start>",
    "tts_end": "<tts_end>",
    "tts_pad": "<tts_pad>",
    "audio_first": "<audio_0>",
    "audio_pad": f"<audio_{N_AUDIO_CODES}>",
}
# The ids the reference code itself fixes (everything else comes from the files alone).
CERTAIN_IDS = {"audio_start": 151688, "audio_first": AUDIO_OFFSET, "audio_pad": AUDIO_OFFSET + N_AUDIO_CODES}


class TokenizerFilesError(ValueError):
    """The checkpoint's tokenizer files lack a token Step-Audio 2 needs, or disagree with the reference's ids."""


def read_added_tokens(directory: str | Path) -> tuple[dict[str, int], list[Path]]:
    """Content -> id of every added token in the directory's tokenizer files, and the files read.

    Both files are read when present; a content given two different ids is an error."""
    directory = Path(directory)
    found: dict[str, int] = {}
    origin: dict[str, Path] = {}
    read: list[Path] = []

    def add(content: str, token_id: int, path: Path) -> None:
        if content in found and found[content] != token_id:
            raise TokenizerFilesError(f"{content!r} is id {found[content]} in {origin[content]} but {token_id} "
                                      f"in {path}")
        found[content], origin[content] = token_id, path

    cfg_path = directory / TOKENIZER_CONFIG
    if cfg_path.is_file():
        read.append(cfg_path)
        for token_id, entry in json.loads(cfg_path.read_text()).get("added_tokens_decoder", {}).items():
            add(entry["content"], int(token_id), cfg_path)
    tok_path = directory / TOKENIZER_JSON
    if tok_path.is_file():
        read.append(tok_path)
        for entry in json.loads(tok_path.read_text()).get("added_tokens", []):
            add(entry["content"], int(entry["id"]), tok_path)
    if not read:
        raise TokenizerFilesError(f"{directory}: neither {TOKENIZER_CONFIG} nor {TOKENIZER_JSON} found")
    return found, read


@dataclass(frozen=True)
class SpecialTokens:
    """The ids of Step-Audio 2's special tokens, as the checkpoint's tokenizer defines them."""

    bot: int
    eot: int
    audio_start: int
    audio_end: int
    audio_patch: int
    tts_start: int
    tts_end: int
    tts_pad: int
    audio_first: int
    audio_pad: int
    text_vocab_size: int = TEXT_VOCAB_SIZE

    @classmethod
    def from_directory(cls, directory: str | Path) -> "SpecialTokens":
        found, files = read_added_tokens(directory)
        names = " and ".join(str(f) for f in files)
        absent = [content for content in TOKEN_CONTENTS.values() if content not in found]
        if absent:
            raise TokenizerFilesError(f"{names}: no added token {', '.join(absent)} (Step-Audio 2 needs it; its id "
                                      "is not guessed)")
        ids = {name: found[content] for name, content in TOKEN_CONTENTS.items()}
        wrong = [f"{TOKEN_CONTENTS[n]} is {ids[n]}, the reference uses {v}" for n, v in CERTAIN_IDS.items()
                 if ids[n] != v]
        if wrong:
            raise TokenizerFilesError(f"{names}: " + "; ".join(wrong))
        return cls(**ids)

    # ---- id classes (SPEC §2) -------------------------------------------------------------------------
    def is_text(self, token_id: int) -> bool:
        return token_id < self.text_vocab_size

    def is_audio(self, token_id: int) -> bool:
        """A speech code id (pad excluded): 151696 .. 151696 + 6560."""
        return self.audio_first <= token_id < self.audio_pad

    def audio_id(self, code: int) -> int:
        if not 0 <= code < N_AUDIO_CODES:
            raise ValueError(f"audio code {code} outside [0, {N_AUDIO_CODES})")
        return self.audio_first + code


class TextTokenizer:
    """The checkpoint's ``tokenizer.json`` (HF ``tokenizers``): segments encoded one by one, text-only decode."""

    def __init__(self, directory: str | Path, special: SpecialTokens | None = None) -> None:
        from tokenizers import Tokenizer

        path = Path(directory) / TOKENIZER_JSON
        if not path.is_file():
            raise TokenizerFilesError(f"{path}: not found (the text tokenizer of a Step-Audio 2 checkpoint)")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.special = special or SpecialTokens.from_directory(directory)

    def encode(self, text: str) -> list[int]:
        """One segment -> ids. Added tokens (<|BOT|>, <tts_start> ...) inside the string map to their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_segments(self, segments: Sequence[str | Sequence[int]]) -> list[int]:
        """Each string tokenized separately (BPE never merges across segments, SPEC §2); id lists pass as is."""
        out: list[int] = []
        for seg in segments:
            out.extend(self.encode(seg) if isinstance(seg, str) else [int(i) for i in seg])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: only ids < 151688 are decoded, as the reference does."""
        return self.tokenizer.decode([int(i) for i in ids if self.special.is_text(int(i))],
                                     skip_special_tokens=False)


def interleave_ta4(text_ids: Sequence[int], audio_codes: Sequence[int], special: SpecialTokens) -> list[int]:
    """A past spoken assistant turn as the model reads it back, 1 text : 4 audio ("TA4", SPEC §2).

    k = max(ceil(A / 4), T); text padded with <tts_pad> to k, audio with <audio_6561> to 4k; then
    <tts_start>, text[i] + audio[4i .. 4i+3] for each i, <tts_end>, and the turn's plain text ids."""
    text = [int(t) for t in text_ids]
    audio = [special.audio_id(int(c)) for c in audio_codes]
    k = max(math.ceil(len(audio) / 4), len(text))
    padded_text = text + [special.tts_pad] * (k - len(text))
    padded_audio = audio + [special.audio_pad] * (4 * k - len(audio))
    out = [special.tts_start]
    for i in range(k):
        out.append(padded_text[i])
        out.extend(padded_audio[4 * i:4 * i + 4])
    return out + [special.tts_end] + text


@dataclass
class ParsedOutput:
    """A generated turn split by kind (SPEC §2 output parsing)."""

    text_ids: list[int] = field(default_factory=list)     # every text id, in order (<tts_pad> dropped)
    audio_codes: list[int] = field(default_factory=list)  # S3 codes in [0, 6560] (<audio_6561> dropped)
    spoken_text_ids: list[int] = field(default_factory=list)  # text ids between <tts_start> and <tts_end>
    speech_started: bool = False                          # a <tts_start> was seen
    speech_ended: bool = False                            # ... and its <tts_end>


def parse_output(ids: Sequence[int], special: SpecialTokens) -> ParsedOutput:
    """Split generated ids; a trailing <|EOT|> (the stop token) is removed first."""
    ids = [int(i) for i in ids]
    if ids and ids[-1] == special.eot:
        ids = ids[:-1]
    out = ParsedOutput()
    in_speech = False
    for i in ids:
        if i == special.tts_start and not out.speech_started:
            out.speech_started = in_speech = True
        elif i == special.tts_end and in_speech:
            in_speech, out.speech_ended = False, True
        elif i == special.tts_pad or i == special.audio_pad:
            continue
        elif special.is_text(i):
            out.text_ids.append(i)
            if in_speech:
                out.spoken_text_ids.append(i)
        elif special.is_audio(i):
            out.audio_codes.append(i - special.audio_first)
    return out
