"""A complete tiny random Step-Audio 2 checkpoint in the official layout, for tests and mechanics benchmarks.

What a user's Step-Audio-2-mini directory holds, at the golden sizes (SPEC2 §12) with random weights:

    config.json, model-0000i-of-0000N.safetensors, model.safetensors.index.json,
    tokenizer.json, tokenizer_config.json                      (runtime.step_audio2.checkpoint)
    token2wav/flow.pt, flow.yaml                               (flow: encoder 64 wide, DiT 64, torch pickle)
    token2wav/hift.pt                                          (HiFT, 32 base channels)
    token2wav/speech_tokenizer_v2_25hz.onnx                    (S3 v2, width 128, exported with torch.onnx)
    token2wav/campplus.onnx                                    (a stand-in speaker model: mean fbank -> 192-d)

The product loads it through exactly the code a real checkpoint goes through (`realtime.step_audio2_stack`).
Random weights say nothing about speech quality. Writing the ONNX files needs the `onnx` package (a test dep).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from runtime.step_audio2.checkpoint import write_tiny_step_audio2

FLOW_CONFIG = {
    "flow": {"input_size": 64, "output_size": 80, "spk_embed_dim": 192, "vocab_size": 6561},
    "encoder": {"input_size": 64, "output_size": 64, "num_blocks": 2, "num_up_blocks": 2, "attention_heads": 2,
                "linear_units": 128, "pre_lookahead_len": 3, "up_stride": 2},
    "estimator": {"in_channels": 320, "out_channels": 80, "hidden_size": 64, "depth": 2, "num_heads": 2,
                  "head_dim": 32, "mlp_ratio": 4.0},
    "cfm": {"inference_cfg_rate": 0.7},
}
# hyperpyyaml-shaped, as the release's flow.yaml nests its classes (tags kept: the loader reads them tolerantly)
FLOW_YAML = """\
flow: !new:cosyvoice2.flow.flow.CausalMaskedDiffWithDiT
    input_size: {flow[input_size]}
    output_size: {flow[output_size]}
    spk_embed_dim: {flow[spk_embed_dim]}
    vocab_size: {flow[vocab_size]}
    encoder: !new:cosyvoice2.transformer.upsample_encoder_v2.UpsampleConformerEncoderV2
        input_size: {encoder[input_size]}
        output_size: {encoder[output_size]}
        num_blocks: {encoder[num_blocks]}
        num_up_blocks: {encoder[num_up_blocks]}
        attention_heads: {encoder[attention_heads]}
        linear_units: {encoder[linear_units]}
        pre_lookahead_len: {encoder[pre_lookahead_len]}
        up_stride: {encoder[up_stride]}
    decoder: !new:cosyvoice2.flow.flow_matching.CausalConditionalCFM
        inference_cfg_rate: {cfm[inference_cfg_rate]}
        estimator: !new:cosyvoice2.flow.decoder_dit.DiT
            in_channels: {estimator[in_channels]}
            out_channels: {estimator[out_channels]}
            hidden_size: {estimator[hidden_size]}
            depth: {estimator[depth]}
            num_heads: {estimator[num_heads]}
            head_dim: {estimator[head_dim]}
            mlp_ratio: {estimator[mlp_ratio]}
"""
S3_CONFIG = {"n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 128, "n_audio_head": 2, "n_audio_layer": 2}


def _randomise(module: nn.Module, seed: int, std: float = 0.05) -> dict[str, torch.Tensor]:
    """Every parameter drawn from N(0, std) (norm gains around 1), reproducibly; returns the state dict."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            draw = torch.randn(p.shape, generator=gen) * std
            p.copy_(1.0 + draw if name.endswith(("norm.weight", "original0", "alpha")) else draw)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def write_flow(directory: Path, seed: int) -> None:
    from vocoder.step_audio2.flow_loader import build_flow

    flow = build_flow(FLOW_CONFIG)
    torch.save(_randomise(flow, seed), directory / "flow.pt")
    (directory / "flow.yaml").write_text(FLOW_YAML.format(**FLOW_CONFIG))


def write_hift(directory: Path, seed: int) -> None:
    from vocoder.step_audio2.hift import HiFTConfig, HiFTGenerator

    hift = HiFTGenerator(HiFTConfig(base_channels=32, f0_channels=32))
    # The release stores HiFT under a `generator.` prefix in some exports; the loader strips it anywhere.
    torch.save({f"generator.{k}": v for k, v in _randomise(hift, seed, std=0.1).items()}, directory / "hift.pt")


def write_s3_onnx(directory: Path, seed: int) -> None:
    from tokenizer.s3.blocks import S3Config
    from tokenizer.s3.v2 import S3TokenizerV2

    model = S3TokenizerV2(S3Config(**S3_CONFIG))
    _randomise(model, seed)
    model.eval()

    class Exported(nn.Module):  # the release's interface: feats [B, 128, T] float, feats_length [B] int32
        def __init__(self, inner: S3TokenizerV2) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
            return self.inner(feats, feats_length.long())[0]

    mel = torch.randn(1, 128, 200)
    torch.onnx.export(Exported(model), (mel, torch.tensor([200], dtype=torch.int32)),
                      str(directory / "speech_tokenizer_v2_25hz.onnx"), dynamo=False,
                      input_names=["feats", "feats_length"], output_names=["indices"],
                      dynamic_axes={"feats": {0: "B", 2: "T"}, "feats_length": {0: "B"}, "indices": {0: "B", 1: "t"}})


def write_speaker_onnx(directory: Path, seed: int) -> None:
    """A stand-in for CAM++ with its interface (input [1, T, 80] fbank, output [1, 192]): mean over time, then a
    random projection. The real model is a ResNet-TDNN; only the interface matters to the loader."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).standard_normal((80, 192)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "weight"], ["embedding"])],
        "campplus_stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 192])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "campplus.onnx"))


def write_tiny_checkpoint(directory: str | Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """The whole tiny checkpoint (see the module docstring) in ``directory``; returns it."""
    directory = Path(directory)
    write_tiny_step_audio2(directory, seed=seed, dtype=dtype)
    t2w = directory / "token2wav"
    t2w.mkdir(parents=True, exist_ok=True)
    write_flow(t2w, seed + 1)
    write_hift(t2w, seed + 2)
    write_s3_onnx(t2w, seed + 3)
    write_speaker_onnx(t2w, seed + 4)
    (directory / "VOXLINE_TINY.json").write_text(json.dumps({"note": "random weights: mechanics only", "seed": seed}))
    return directory
