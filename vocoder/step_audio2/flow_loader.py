"""Build and strictly load the token2wav flow (Step-Audio 2, and EditX's dual-codebook variant) — SPEC2 §9, §12.

:func:`load_flow` is the one entry point: an official ``flow.pt`` / safetensors file or a name -> tensor dict goes
through :func:`voxcore.strict_load.load_strict` (meta-device build, one error naming every mismatch).

``config`` is a dict shaped like ``golden/step_audio2/flow/config.json`` (sections ``flow``, ``encoder``,
``estimator_dit``, ``cfm``) or like ``golden/step_audio_v1/flow_editx/config.json`` (``estimator`` and ``decoder``
instead, and ``flow.input_embedding.cls == "DualCodebookEmbedding"``). Missing values take the full-size Step-Audio 2
ones of SPEC2 §9's header (512 wide, 6+4 conformer blocks, 8 heads, FFN 2048; DiT 512, depth 16, 8x64; vocab 6561).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from voxcore.strict_load import Source, empty_parameters, load_strict
from vocoder.step_audio2.dit import DiT
from vocoder.step_audio2.flow import StepAudio2Flow
from vocoder.step_audio2.flow_encoder import UpsampleConformerEncoderV2

FULL_SIZE: dict[str, dict[str, Any]] = {
    "flow": {"input_size": 512, "output_size": 80, "spk_embed_dim": 192, "vocab_size": 6561},
    "encoder": {"input_size": 512, "output_size": 512, "num_blocks": 6, "num_up_blocks": 4, "attention_heads": 8,
                "linear_units": 2048, "pre_lookahead_len": 3, "up_stride": 2},
    "estimator": {"in_channels": 320, "out_channels": 80, "hidden_size": 512, "depth": 16, "num_heads": 8,
                  "head_dim": 64, "mlp_ratio": 4.0},
    "cfm": {"inference_cfg_rate": 0.7, "n_timesteps": 10},
}
DUAL_CODEBOOK = "DualCodebookEmbedding"


def _section(config: Mapping[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if name in config:
            return dict(config[name])
    return {}


def _pick(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    return {k: given.get(k, v) for k, v in defaults.items()}


def build_flow(config: Mapping[str, Any] | None = None) -> StepAudio2Flow:
    """The flow module tree for ``config`` (see the module docstring), parameters uninitialised."""
    config = config or {}
    flow_cfg = _section(config, "flow")
    flow = _pick(FULL_SIZE["flow"], flow_cfg)
    enc = _pick(FULL_SIZE["encoder"], _section(config, "encoder"))
    est = _pick(FULL_SIZE["estimator"], _section(config, "estimator_dit", "estimator"))
    cfm = _pick(FULL_SIZE["cfm"], {**_section(config, "decoder"), **_section(config, "cfm")})
    embedding_cfg = dict(flow_cfg.get("input_embedding") or {})
    embedding: nn.Module
    if embedding_cfg.get("cls") == DUAL_CODEBOOK:
        # EditX (v1 SPEC §9.2); imported here so the Step-Audio 2 path needs nothing of step_audio_v1
        from vocoder.step_audio_v1.editx_flow import DualCodebookEmbedding
        embedding = DualCodebookEmbedding(embedding_cfg.get("vocab_size", flow["vocab_size"]),
                                          embedding_cfg.get("input_size", flow["input_size"]))
    else:
        embedding = nn.Embedding(flow["vocab_size"], flow["input_size"])
    encoder = UpsampleConformerEncoderV2(**enc)
    estimator = DiT(**est)
    return StepAudio2Flow(embedding, encoder, estimator, spk_embed_dim=flow["spk_embed_dim"],
                          output_size=flow["output_size"], cfg_rate=float(cfm["inference_cfg_rate"]),
                          n_timesteps=int(cfm["n_timesteps"]))


def load_flow(path_or_tensors: Source, config: Mapping[str, Any] | None = None, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> StepAudio2Flow:
    """Load a flow checkpoint (``flow.pt``, safetensors, or a dict with the official key names) strictly."""
    with empty_parameters():
        model = build_flow(config)
    return load_strict(model, path_or_tensors, dtype=dtype, device=device)
