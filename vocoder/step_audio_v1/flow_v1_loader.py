"""The one loader of the Step-Audio-TTS-3B flow: an official `flow.pt` (or safetensors, or a tensor dict) -> FlowV1.

Builds :class:`~vocoder.step_audio_v1.flow_v1.FlowV1` on the meta device and fills it through
``voxcore.strict_load.load_strict``: the checkpoint's names are the module's (the reference loads `flow.pt` strictly,
no renaming), and any missing, unexpected or mis-shaped tensor is named in one ``CheckpointError``. The golden tests
load `flow_v1/weights.safetensors` through this same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vocoder.step_audio_v1.flow_v1 import FlowV1, FlowV1Config
from voxcore.strict_load import Source, empty_parameters, load_strict


def load_flow_v1(path_or_tensors: Source, config: FlowV1Config | Mapping[str, Any] | None = None,
                 dtype: torch.dtype | None = torch.float32, device: str | torch.device = "cpu") -> FlowV1:
    """Checkpoint file(s) or name -> tensor mapping, sizes (a FlowV1Config, its field dict or the nested
    `config.json` layout; None = full-size defaults) -> FlowV1 in eval mode on ``device`` in ``dtype``."""
    cfg = FlowV1Config.coerce(config)
    with empty_parameters():
        model = FlowV1(cfg)
    where = str(path_or_tensors) if not isinstance(path_or_tensors, Mapping) else "flow_v1 tensors"
    return load_strict(model, path_or_tensors, dtype=dtype, device=device, where=where)
