"""The Step-Audio 2 golden tensors (../shared/golden/step_audio2, SPEC.md there) as fixtures.

The folder sits beside the repository (`VOXLINE_GOLDEN_DIR` overrides its parent). Tests skip with that reason only
when it is absent; in CI it is there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_PARENT = Path(os.environ.get("VOXLINE_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))
GOLDEN = GOLDEN_PARENT / "step_audio2"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden tensors not found at {GOLDEN} (set VOXLINE_GOLDEN_DIR to the folder holding step_audio2/)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden(golden_dir):
    """golden("flow/offline") -> dict of tensors from flow/offline.safetensors."""
    def read(name: str):
        return load_file(str(golden_dir / f"{name}.safetensors"))
    return read


@pytest.fixture(scope="session")
def golden_json(golden_dir):
    def read(name: str):
        return json.loads((golden_dir / name).read_text())
    return read
