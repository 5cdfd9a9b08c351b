"""Where voxline keeps model files it derives from installed packages (joined splits, converted weights).

One rule for every model package: `VOXLINE_CACHE`, default `~/.cache/voxline`. Files put there are checked by
SHA-256, so a corrupted or substituted file fails loudly instead of running.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """The cache directory (created if missing)."""
    root = Path(os.environ.get("VOXLINE_CACHE", Path.home() / ".cache" / "voxline"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
