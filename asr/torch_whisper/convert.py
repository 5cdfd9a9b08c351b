"""CTranslate2 Whisper ``model.bin`` -> torch tensors (cached as safetensors, keyed by the model's SHA-256).

CTranslate2 writes its models with ``ModelSpec._serialize`` (``ctranslate2/specs/model_spec.py``, binary
version 6), all little-endian::

    u32 version | str spec_name | u32 revision | u32 n_variables
    n_variables x ( str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes )
    u32 n_aliases | n_aliases x ( str alias | str target )

where ``str`` is ``u16 length (incl. NUL) | utf-8 bytes | NUL`` and dtype follows CTranslate2's
``DataType`` enum (float32, int8, int16, int32, float16, bfloat16). Int8 models carry a
``<name>_scale`` per weight row; we dequantise those (``weight / scale``).

Names map onto :class:`asr.torch_whisper.model.Whisper` like this (CTranslate2 fuses projections):
``self_attention/linear_0`` = q|k|v, ``linear_1`` = output; decoder ``attention/linear_0`` = q,
``linear_1`` = k|v, ``linear_2`` = output; ``ffn/linear_0|1`` = fc1|fc2; ``layer_norm/gamma|beta``.
The output projection is an alias of the token embedding (Whisper ties them).
"""
from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path

import torch

from voxcore.embedded_whisper import WHISPER_BASE_SHA256, whisper_model_dir
from voxcore.model_cache import cache_root, sha256_file

log = logging.getLogger(__name__)

BINARY_VERSION = 6
_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this reader understands."""


def read_ct2(path: str | Path) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
    """Parse a CTranslate2 ``model.bin``: (spec name, variables, aliases). Tensors are views on one buffer."""
    data = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        text = bytes(data[pos:pos + n - 1]).decode("utf-8")
        pos += n
        return text

    version = take("I")
    if version != BINARY_VERSION:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}, this reader knows {BINARY_VERSION}")
    spec = string()
    take("I")  # spec revision
    variables: dict[str, torch.Tensor] = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = _DTYPES.get(take("B"))
        n_bytes = take("I")
        if dtype is None:
            raise CT2FormatError(f"{path}: variable {name} has an unknown dtype")
        raw = torch.frombuffer(bytearray(data[pos:pos + n_bytes]), dtype=torch.uint8)
        variables[name] = raw.view(dtype).reshape(shape)
        pos += n_bytes
    aliases = {}
    for _ in range(take("I")):
        alias = string()
        aliases[alias] = string()
    return spec, variables, aliases


def _float(variables: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    w = variables[name]
    scale = variables.get(name + "_scale")
    if w.dtype == torch.int8:
        if scale is None:
            raise CT2FormatError(f"int8 variable {name} has no {name}_scale")
        return (w.float() / scale.float().reshape(-1, *([1] * (w.dim() - 1)))).half()
    return w


def _count_layers(variables: dict[str, torch.Tensor], stack: str) -> int:
    layer = re.compile(rf"^{stack}/layer_(\d+)/")
    return 1 + max(int(m.group(1)) for k in variables if (m := layer.match(k)))


def ct2_to_state_dict(variables: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper variables -> our parameter names (dtype kept: float16 for the shipped models)."""
    def get(name: str) -> torch.Tensor:
        return _float(variables, aliases.get(name, name))

    def lin(dst: str, src: str, sd: dict) -> None:
        sd[dst + ".weight"] = get(src + "/weight")
        sd[dst + ".bias"] = get(src + "/bias")

    def norm(dst: str, src: str, sd: dict) -> None:
        sd[dst + ".weight"] = get(src + "/gamma")
        sd[dst + ".bias"] = get(src + "/beta")

    sd: dict[str, torch.Tensor] = {}
    for i in (1, 2):
        sd[f"encoder.conv{i}.weight"] = get(f"encoder/conv{i}/weight")
        sd[f"encoder.conv{i}.bias"] = get(f"encoder/conv{i}/bias")
    sd["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")
    n_enc = _count_layers(variables, "encoder")
    for i in range(n_enc):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm", sd)
        lin(f"{dst}.attn.qkv", f"{src}/self_attention/linear_0", sd)
        lin(f"{dst}.attn.out", f"{src}/self_attention/linear_1", sd)
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm", sd)
        lin(f"{dst}.fc1", f"{src}/ffn/linear_0", sd)
        lin(f"{dst}.fc2", f"{src}/ffn/linear_1", sd)
    norm("encoder.ln_post", "encoder/layer_norm", sd)

    sd["decoder.token_embedding.weight"] = get("decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    n_dec = _count_layers(variables, "decoder")
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm", sd)
        lin(f"{dst}.attn.qkv", f"{src}/self_attention/linear_0", sd)
        lin(f"{dst}.attn.out", f"{src}/self_attention/linear_1", sd)
        norm(f"{dst}.cross_ln", f"{src}/attention/layer_norm", sd)
        lin(f"{dst}.cross.q", f"{src}/attention/linear_0", sd)
        lin(f"{dst}.cross.kv", f"{src}/attention/linear_1", sd)
        lin(f"{dst}.cross.out", f"{src}/attention/linear_2", sd)
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm", sd)
        lin(f"{dst}.fc1", f"{src}/ffn/linear_0", sd)
        lin(f"{dst}.fc2", f"{src}/ffn/linear_1", sd)
    norm("decoder.ln", "decoder/layer_norm", sd)
    projection = aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if projection != "decoder/embeddings/weight":
        raise CT2FormatError("the output projection is not tied to the token embedding (not a Whisper model?)")
    for name, scalar in (("encoder/num_heads", "n_audio_head"), ("decoder/num_heads", "n_text_head")):
        sd[f"dims.{scalar}"] = variables[name].to(torch.int32).reshape(1)
    return {k: v.contiguous() for k, v in sd.items()}


def model_sha256(name: str, model_dir: Path) -> str:
    """SHA-256 of ``model.bin``: the pinned one for Whisper base (checked when the parts were joined)."""
    if name == "whisper-base":
        return WHISPER_BASE_SHA256
    marker = cache_root() / "torch-whisper" / f"{name}.sha256"
    model_bin = model_dir / "model.bin"
    stamp = f"{model_bin.stat().st_size}:{model_bin.stat().st_mtime_ns}"
    if marker.exists():
        cached_stamp, _, digest = marker.read_text().strip().partition(" ")
        if cached_stamp == stamp:
            return digest
    digest = sha256_file(model_bin)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{stamp} {digest}\n")
    return digest


def converted_path(name: str = "whisper-base") -> Path:
    """Safetensors file of the converted model under the voxline cache, converting once if needed."""
    from safetensors.torch import save_file

    model_dir = whisper_model_dir(name)
    sha = model_sha256(name, model_dir)
    target = cache_root() / "torch-whisper" / f"{name}-{sha[:16]}.safetensors"
    if target.exists():
        return target
    spec, variables, aliases = read_ct2(model_dir / "model.bin")
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{model_dir}/model.bin holds a {spec}, not a WhisperSpec")
    log.info("converting %s (CTranslate2) to torch tensors at %s (one time)", name, target)
    sd = ct2_to_state_dict(variables, aliases)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata={"source": str(model_dir / "model.bin"), "sha256": sha,
                                       "config": json.dumps({"name": name})})
    tmp.replace(target)
    return target


def tokenizer_path(name: str = "whisper-base") -> Path:
    """``tokenizer.json`` shipped beside the CTranslate2 model (the `tokenizers` format faster-whisper reads)."""
    return whisper_model_dir(name) / "tokenizer.json"


if __name__ == "__main__":  # python -m asr.torch_whisper.convert [name]
    import sys

    logging.basicConfig(level=logging.INFO)
    path = converted_path(sys.argv[1] if len(sys.argv) > 1 else "whisper-base")
    print(path, f"{path.stat().st_size / 1e6:.1f} MB")
