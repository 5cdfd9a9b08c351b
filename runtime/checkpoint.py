"""Load and save HF-style checkpoint directories: ``config.json`` + ``*.safetensors``.

Tensor names are Qwen2's (``model.embed_tokens.weight``, ``model.layers.N.self_attn.q_proj.weight``,
``model.norm.weight``, ``lm_head.weight``) plus ours for the MTP modules (``mtp.N.eh_proj.weight``,
``mtp.N.block.self_attn.q_proj.weight`` ...). Sharded checkpoints (several ``*.safetensors`` files)
are read as one. A tied output head is not stored (HF convention).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from runtime.config import LMConfig
from runtime.model import AudioLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory that does not match the model it describes."""


def _stored_names(model: AudioLM) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_checkpoint(model: AudioLM, path: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into directory ``path`` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in _stored_names(model).items()}
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    return path


def _read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                if name in out:
                    raise CheckpointError(f"tensor {name!r} appears in more than one file ({f.name})")
                out[name] = fh.get_tensor(name)
    return out


def load_checkpoint(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    mtp_path: str | Path | None = None, **config_overrides) -> AudioLM:
    """Build the model described by ``path/config.json`` and load every tensor from ``path/*.safetensors``.

    ``mtp_path``: a separate MTP weights file (from ``train-mtp``) loaded on top. ``config_overrides``
    replace config fields (e.g. audio vocabulary fields for a checkpoint whose config lacks them).
    Missing, unexpected or mis-shaped tensors raise :class:`CheckpointError` naming them.
    """
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_NAME}; expected an HF-style checkpoint directory")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files")
    raw = json.loads(cfg_file.read_text())
    cfg = LMConfig.from_hf_dict(raw).replace(**config_overrides)
    tensors = _read_tensors(files)
    if mtp_path is not None:
        tensors.update(_read_tensors([Path(mtp_path)]))
    if dtype is None:
        dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    model = AudioLM(cfg)
    _load_into(model, tensors, where=str(path))
    return model.to(device=device, dtype=dtype).eval()


def _load_into(model: AudioLM, tensors: dict[str, torch.Tensor], where: str, prefix: str = "") -> None:
    expected = {k: v for k, v in _stored_names(model).items() if k.startswith(prefix)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(expected) if k.startswith(prefix))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors ({len(missing)}): {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:8])}"
                         + (" ..." if len(unexpected) > 8 else ""))
        raise CheckpointError(f"{where}: checkpoint does not match config "
                              f"(n_layers={model.config.n_layers}, n_mtp={model.config.n_mtp}): "
                              + "; ".join(parts))
    bad = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{where}: shape mismatch: " + "; ".join(bad[:8]))
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(tensors[k].to(v.dtype))


def save_mtp(model: AudioLM, file: str | Path) -> Path:
    """Write only the MTP modules' tensors (``mtp.*``) to one safetensors file."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith("mtp.")}
    save_file(tensors, str(file), metadata={"format": "pt", "n_mtp": str(model.config.n_mtp)})
    return file


def load_mtp(model: AudioLM, file: str | Path) -> AudioLM:
    """Load MTP weights saved by :func:`save_mtp` into ``model`` (in place; returns it)."""
    _load_into(model, _read_tensors([Path(file)]), where=str(file), prefix="mtp.")
    return model
