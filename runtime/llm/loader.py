"""Build the engine for an embedded LLM: converted checkpoint → runtime model → torch (or vLLM) engine."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from runtime.llm.embedded import checkpoint_dir, spec
from runtime.llm.torch_engine import EngineOptions, TorchChatEngine

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def options_from_env() -> tuple[EngineOptions, torch.dtype, str]:
    """``VOXLINE_LLM_SLOTS`` (concurrent requests, default 2), ``VOXLINE_LLM_CAPACITY`` (positions per
    request, default 4096), ``VOXLINE_LLM_MTP`` (MTP drafts per step, default 0), ``VOXLINE_LLM_DTYPE``
    (``bfloat16`` default — half the memory traffic of float32 and faster on AVX512-BF16 CPUs;
    ``float32``), ``VOXLINE_LLM_QUANT`` (``none`` default; ``int8``: dynamic int8 linear layers, about
    twice the decode speed of bf16 here, but see :func:`quantize_int8`), ``VOXLINE_LLM_BACKEND``
    (``torch`` default, ``vllm``)."""
    env = os.environ.get
    opts = EngineOptions(slots=int(env("VOXLINE_LLM_SLOTS", "2")),
                         capacity=int(env("VOXLINE_LLM_CAPACITY", "4096")),
                         n_draft=int(env("VOXLINE_LLM_MTP", "0")))
    dtype_name = env("VOXLINE_LLM_DTYPE", "bfloat16")
    if dtype_name not in _DTYPES:
        raise ValueError(f"VOXLINE_LLM_DTYPE={dtype_name!r}; choose one of {', '.join(_DTYPES)}")
    quant = env("VOXLINE_LLM_QUANT", "none")
    if quant not in ("none", "int8"):
        raise ValueError(f"VOXLINE_LLM_QUANT={quant!r}; choose none or int8")
    backend = env("VOXLINE_LLM_BACKEND", "torch")
    if backend not in ("torch", "vllm"):
        raise ValueError(f"VOXLINE_LLM_BACKEND={backend!r}; choose torch or vllm")
    return opts, _DTYPES[dtype_name], quant, backend


def mtp_weights_path(model_id: str) -> Path:
    """Where ``runtime.llm.mtp`` saves the self-distilled MTP modules of ``model_id``."""
    from runtime.llm.embedded import cache_root
    return cache_root() / f"{model_id}-mtp.safetensors"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of every ``nn.Linear`` (per-output-channel weights, activations
    quantised on the fly), applied from outside the model. Needs a float32 model; a quarter of the
    weight bytes of float32, which is what a CPU decode step is bound by.

    Not the default: the activation scale is one per input *matrix*, so a request's logits depend on
    what it is batched with and on how its prompt was chunked (prefix reuse) — greedy answers then vary
    between identical requests, and MTP verification is no longer token-exact."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (the API still works in 2.13)
        return quantize_dynamic(model.float(), {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def load_torch_engine(model_id: str, options: EngineOptions | None = None,
                      dtype: torch.dtype = torch.bfloat16, mtp_path: str | Path | None = None,
                      quant: str = "none") -> TorchChatEngine:
    from runtime.checkpoint import load_checkpoint
    from runtime.llm.chat_format import chat_format
    from runtime.llm.tokenizer import TextTokenizer

    s = spec(model_id)
    options = options or EngineOptions()
    path = checkpoint_dir(model_id)
    overrides = {}
    if options.n_draft:
        mtp_path = Path(mtp_path) if mtp_path else mtp_weights_path(model_id)
        if not mtp_path.is_file():
            raise RuntimeError(f"MTP decoding needs trained MTP weights at {mtp_path}; run "
                               f"`python -m runtime.llm.mtp --model {model_id}` or set VOXLINE_LLM_MTP=0")
        from safetensors import safe_open
        with safe_open(str(mtp_path), framework="pt") as fh:
            overrides["n_mtp"] = int(fh.metadata().get("n_mtp", options.n_draft))
    model = load_checkpoint(path, dtype=torch.float32 if quant == "int8" else dtype,
                            mtp_path=mtp_path if options.n_draft else None, **overrides)
    if quant == "int8":
        model = quantize_int8(model)
    tok = TextTokenizer(path)
    return TorchChatEngine(model, tok, chat_format(s.chat_format, tok), model_id, options,
                           description=s.description)


def load_embedded(model_id: str):
    """Registry entry: the engine for an embedded LLM, configured from the environment."""
    options, dtype, quant, backend = options_from_env()
    if backend == "vllm":
        from runtime.llm.vllm_engine import VLLMChatEngine
        return VLLMChatEngine(model_id, checkpoint_dir(model_id), options)
    return load_torch_engine(model_id, options, dtype, quant=quant)
