"""Local HF-style checkpoint directories: `config.json` (architecture sizes) + `model.safetensors`.

The architecture sizes travel with the weights, so a directory is self-describing. This is *our*
layout; converting the official Step-Audio / CosyVoice releases would need a key-mapping step that
is not written yet (their tokenizers ship as ONNX + Paraformer checkpoints, not as this module tree).
The tokenizer and the vocoder both save and load through here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

C = TypeVar("C")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_checkpoint(model: nn.Module, config: Any, directory: str | Path, architecture: str) -> Path:
    """Write `config` (a dataclass) and the model's state dict into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    body = {"architecture": architecture, **dataclasses.asdict(config)}
    (directory / CONFIG_NAME).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    # safetensors refuses shared or non-contiguous storage; clone makes every tensor its own.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"architecture": architecture})
    return directory


def load_config(directory: str | Path, config_cls: type[C], architecture: str) -> C:
    """Read config.json into `config_cls`, checking the architecture name and rejecting unknown keys."""
    path = Path(directory) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a checkpoint directory needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    body = json.loads(path.read_text())
    found = body.pop("architecture", None)
    if found != architecture:
        raise ValueError(f"{path} describes {found!r}, expected {architecture!r}")
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(body) - known
    if unknown:
        raise ValueError(f"{path} has unknown fields {sorted(unknown)}; known: {sorted(known)}")
    for field in dataclasses.fields(config_cls):  # JSON turns tuples into lists
        if isinstance(body.get(field.name), list):
            body[field.name] = _tuplify(body[field.name])
    return config_cls(**body)


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def load_weights(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load model.safetensors strictly (every key present, no extras, same shapes)."""
    path = Path(directory) / WEIGHTS_NAME
    tensors = load_file(str(path))
    own = model.state_dict()
    missing, extra = set(own) - set(tensors), set(tensors) - set(own)
    if missing or extra:
        raise ValueError(f"{path}: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    for key, value in tensors.items():
        if value.shape != own[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, model wants {tuple(own[key].shape)}")
    model.load_state_dict(tensors, strict=True)
    return model


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build random weights from `seed` without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
