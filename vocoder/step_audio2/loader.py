"""Load an official ``hift.pt`` (or its safetensors copy, or a name -> tensor dict) into :class:`HiFTGenerator`.

The one public entry is :func:`load_hift`; the golden tests go through it too. Naming rules (SPEC2 §11 "hift.pt
loading", SPEC v1 §8.9 "Weight norm"):

- the reference loader removes the substring ``generator.`` wherever it occurs in a key (``str.replace``);
- legacy weight-norm names ``<conv>.weight_g`` / ``<conv>.weight_v`` are the parametrisation's ``original0`` (g)
  and ``original1`` (v), the spelling the module uses.

The module is built on the meta device and filled by :func:`voxcore.strict_load.load_strict`, which names every
missing, unexpected or mis-shaped tensor in one error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from vocoder.step_audio2.hift import HiFTConfig, HiFTGenerator
from voxcore.strict_load import Source, empty_parameters, load_strict

_LEGACY_WEIGHT_NORM = {".weight_g": ".parametrizations.weight.original0",
                       ".weight_v": ".parametrizations.weight.original1"}


def hift_key(file_key: str) -> str:
    """An official checkpoint key -> this module's key."""
    key = file_key.replace("generator.", "")
    for legacy, name in _LEGACY_WEIGHT_NORM.items():
        if key.endswith(legacy):
            return key[: -len(legacy)] + name
    return key


def hift_config(config: HiFTConfig | Mapping | None = None, base: HiFTConfig | None = None) -> HiFTConfig:
    """A :class:`HiFTConfig` from a config object, a ``config.json``-style dict, or None (``base``, by default the
    full-size Step-Audio 2 generator of SPEC2 §11)."""
    if isinstance(config, HiFTConfig):
        return config
    base = HiFTConfig() if base is None else base
    return base if config is None else HiFTConfig.from_dict(dict(config), base)


def load_hift(path_or_tensors: Source, config: HiFTConfig | Mapping | None = None,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> HiFTGenerator:
    """Build a HiFT generator for ``config`` and load ``path_or_tensors`` (.pt / .safetensors path(s) or a dict)
    strictly into it, in ``dtype`` on ``device``. Returns the module in eval mode."""
    cfg = hift_config(config)
    with empty_parameters():
        model = HiFTGenerator(cfg)
    where = str(path_or_tensors) if isinstance(path_or_tensors, str | Path) else "HiFT checkpoint"
    return load_strict(model, path_or_tensors, dtype=dtype, device=device, where=where, rename=hift_key)
