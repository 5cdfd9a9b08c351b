"""`load_s3_tokenizer`: the one way to get an S3 tokenizer (v2 or v1) from a checkpoint, a golden or an ONNX file.

- A safetensors / .pt state dict (or a name -> tensor dict) in the reference's names is built on the meta device and
  loaded through voxcore.strict_load, which names every missing, unexpected and mis-shaped tensor in one error.
  The v1 sinusoid table is derived, not loaded; a file that carries one (s3tokenizer's onnx-to-torch output does)
  must hold the same values.
- An official `.onnx` file runs through onnxruntime (onnx_runner.py) behind the same S3Tokenizer interface.

Sizes: `config` as S3Config, a dict in the reference's config.json spelling, or a path to such a json; when None,
a `config.json` beside the weights file is read if there is one, else the released model's sizes (width 1280,
20 heads, 6 layers; 6561 codes for v2, 4096 for v1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from tokenizer.s3.blocks import S3Config, S3Tokenizer
from tokenizer.s3.onnx_runner import OnnxS3Tokenizer
from tokenizer.s3.v1 import V1_CODEBOOK_SIZE, S3TokenizerV1
from tokenizer.s3.v2 import S3TokenizerV2
from voxcore.strict_load import CheckpointError, empty_parameters, load_strict

V1_TABLE = "encoder.positional_embedding"
_DEFAULT_CODES = {"v2": 6561, "v1": V1_CODEBOOK_SIZE}


def load_s3_tokenizer(path: str | Path | Mapping[str, torch.Tensor], version: str = "v2",
                      config: S3Config | Mapping | str | Path | None = None, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> S3Tokenizer:
    """An S3 tokenizer of `version` ("v2" | "v1") from `path` (.safetensors, .pt, .onnx, or a tensor dict)."""
    if version not in _DEFAULT_CODES:
        raise ValueError(f"S3 tokenizer version must be 'v2' or 'v1', got {version!r}")
    cfg = _config(config, path, version)
    if isinstance(path, (str, Path)) and Path(path).suffix == ".onnx":
        if not Path(path).is_file():
            raise CheckpointError(f"ONNX file not found: {path}")
        return OnnxS3Tokenizer(path, version, n_mels=cfg.n_mels, conv1_stride=cfg.conv1_stride, device=device)
    with empty_parameters():
        model = S3TokenizerV2(cfg) if version == "v2" else S3TokenizerV1(cfg)
    where = str(path) if isinstance(path, (str, Path)) else f"S3 tokenizer {version} state dict"
    load_strict(model, path, dtype=dtype, device=device, where=where,
                rename=(lambda key: None if key == V1_TABLE else key) if version == "v1" else None)
    if version == "v1":
        _check_stored_table(model, path, where)
    return model


def _config(config, path, version: str) -> S3Config:
    if isinstance(config, S3Config):
        return config
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    if config is None and isinstance(path, (str, Path)) and (Path(path).parent / "config.json").is_file():
        config = json.loads((Path(path).parent / "config.json").read_text())
    values = dict(config or {})
    values.setdefault("n_codebook_size", _DEFAULT_CODES[version])
    return S3Config.from_dict(values)


def _check_stored_table(model: S3TokenizerV1, source, where: str) -> None:
    """A stored v1 sinusoid table is dropped in favour of the derived one, but only if they agree."""
    stored = _stored_tensor(source, V1_TABLE)
    if stored is None:
        return
    derived = model.encoder.positional_embedding
    if stored.shape != derived.shape or not torch.allclose(stored.to(derived), derived, atol=1e-4):
        raise CheckpointError(f"{where}: {V1_TABLE} {tuple(stored.shape)} is not the sinusoid table of SPEC1 §4 "
                              f"{tuple(derived.shape)}; this port cannot represent it")


def _stored_tensor(source, name: str) -> torch.Tensor | None:
    if isinstance(source, Mapping):
        return source.get(name)
    path = Path(source)
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as fh:
            return fh.get_tensor(name) if name in fh.keys() else None
    state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return state.get(name)
