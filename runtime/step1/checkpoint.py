"""Load and save Step1 checkpoints in the official layout: ``config.json`` + safetensors shard(s).

:func:`load_step1` is the one way in, for a user's downloaded Step-Audio-TTS-3B / EditX folder and for the
golden test files alike. It builds the model on the meta device and fills it through
:func:`voxcore.strict_load.load_strict`, so every missing, unexpected or mis-shaped tensor is named in one
:class:`~voxcore.strict_load.CheckpointError` and a 3B model is never allocated twice.

Layout (HF convention): either one ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` shards with
``model.safetensors.index.json`` (its ``weight_map`` says which file holds which tensor). Tensor names are the
official ones (SPEC step_audio_v1 §6); a tied checkpoint stores no ``lm_head.weight``, and one found anyway
in a tied checkpoint is ignored (HF writes it in some versions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from runtime.step1.config import Step1Config
from runtime.step1.model import Step1ForCausalLM
from voxcore.strict_load import CheckpointError, empty_parameters, load_strict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"

#: The golden sizes (SPEC §10): real vocabulary, 6 heads in 2 groups (non-power-of-two slopes), 2 layers.
TINY_STEP1 = Step1Config(hidden_size=24, intermediate_size=64, num_attention_heads=6, num_attention_groups=2,
                         num_hidden_layers=2, vocab_size=74752, tie_word_embeddings=False)


def _resolve(directory_or_files: str | Path | Sequence[str | Path]) -> tuple[Path, list[Path]]:
    """(config.json, weight files) of a checkpoint folder, or of explicit files (config.json beside them)."""
    if isinstance(directory_or_files, (str, Path)) and Path(directory_or_files).is_dir():
        folder = Path(directory_or_files)
        index = folder / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = [folder / name for name in sorted(set(weight_map.values()))]
        else:
            files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{folder}: no *.safetensors weights")
    else:
        raw = [directory_or_files] if isinstance(directory_or_files, (str, Path)) else list(directory_or_files)
        files = [Path(f) for f in raw]
        if not files:
            raise CheckpointError("load_step1: no weight files given")
        folder = files[0].parent
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"checkpoint file not found: {f}")
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} beside the weights")
    return config, files


def _tensor_names(files: list[Path]) -> set[str]:
    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            names.update(fh.keys())
    return names


def load_step1(directory_or_files: str | Path | Sequence[str | Path], dtype: torch.dtype = torch.bfloat16,
               device: str | torch.device = "cpu") -> Step1ForCausalLM:
    """A :class:`Step1ForCausalLM` from an official checkpoint folder (or its safetensors files, with
    ``config.json`` in the same folder), cast to ``dtype`` on ``device``, in eval mode.

    Raises :class:`~voxcore.strict_load.CheckpointError` naming every missing / unexpected / mis-shaped
    tensor, or a missing config or weight file.
    """
    config_path, files = _resolve(directory_or_files)
    raw = json.loads(config_path.read_text())
    # An absent tie_word_embeddings is settled by the file itself: no lm_head stored means tied (SPEC §12).
    cfg = Step1Config.from_official_dict(raw, tie_default=LM_HEAD not in _tensor_names(files))
    with empty_parameters():
        model = Step1ForCausalLM(cfg)
    rename = (lambda key: None if key == LM_HEAD else key) if cfg.tie_word_embeddings else None
    where = str(directory_or_files) if isinstance(directory_or_files, (str, Path)) else str(config_path.parent)
    return load_strict(model, files, dtype=dtype, device=device, where=where, rename=rename)


def save_step1(model: Step1ForCausalLM, directory: str | Path, max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` in the official layout into ``directory`` (created if needed), in its own dtype.

    One ``model.safetensors``, or shards of at most ``max_shard_bytes`` each (a tensor larger than that gets
    a shard of its own) plus ``model.safetensors.index.json``. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    dtype = next(iter(tensors.values())).dtype
    config = model.config.to_official_dict(torch_dtype=str(dtype).removeprefix("torch."))
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        return directory
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file_name), metadata={"format": "pt"})
        weight_map.update({name: file_name for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")
    return directory


def init_step1_weights(model: Step1ForCausalLM, seed: int) -> Step1ForCausalLM:
    """Random weights as the goldens draw them (SPEC §10), reproducible from ``seed``: linear weights
    N(0, 1/fan_in), norm gains 1 + 0.1 N(0, 1), embeddings N(0, 1). For tests and mechanics only."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name == "model.embed_tokens.weight":
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)
    return model


def write_tiny_step1(directory: str | Path, seed: int, config: Step1Config = TINY_STEP1) -> Path:
    """A random float32 Step1 checkpoint in the official layout (default: the golden sizes, SPEC §10)."""
    return save_step1(init_step1_weights(Step1ForCausalLM(config), seed), directory)
