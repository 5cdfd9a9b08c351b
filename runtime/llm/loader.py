"""Build the engine for an embedded LLM: the packaged GGUF → llama.cpp (the default), or converted checkpoint →
runtime model → torch (or vLLM) engine."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from runtime.llm.embedded import checkpoint_dir, spec
from runtime.llm.torch_engine import EngineOptions, TorchChatEngine

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


BACKENDS = ("torch", "llamacpp", "vllm")
#: llama.cpp on the packaged GGUF as it is: 3-5x the torch engine's decode speed on 2 cores (bench/RESULTS.md,
#: "llama.cpp vs torch engine"). Where it cannot run (CPU without the wheel's instruction set, wheel missing) the
#: default falls back to the torch engine and logs why; an explicit VOXLINE_LLM_BACKEND=llamacpp fails instead.
DEFAULT_BACKEND = "llamacpp"


def llamacpp_unavailable_reason() -> str | None:
    """Why llama.cpp cannot be this process's engine (None if it can). Nothing here imports ``xllamacpp``: on a
    CPU without the wheel's AVX2/FMA/F16C/BMI2 its import would die of SIGILL."""
    import importlib.util

    from runtime.llm.llamacpp_engine import WHEEL_CPU_FLAGS, cpu_supported

    if not cpu_supported():
        return f"this CPU lacks one of {'/'.join(sorted(WHEEL_CPU_FLAGS))} the xllamacpp wheel is built for"
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed (run `make install`)"
    return None


def default_backend() -> str:
    """``VOXLINE_LLM_BACKEND`` unset: llama.cpp, or torch (with a logged reason) where llama.cpp cannot run."""
    reason = llamacpp_unavailable_reason() if DEFAULT_BACKEND == "llamacpp" else None
    if reason:
        log.warning("chat engine: torch instead of the default llama.cpp: %s", reason)
        return "torch"
    return DEFAULT_BACKEND


def options_from_env() -> tuple[EngineOptions, torch.dtype, str, str]:
    """``VOXLINE_LLM_BACKEND`` (``llamacpp`` default: llama.cpp on the GGUF itself, or ``torch`` where it cannot
    run — see :func:`default_backend`; ``torch``: our engine on weights dequantised to bf16; ``vllm``),
    ``VOXLINE_LLM_SLOTS`` (concurrent requests, default 4 on llama.cpp, where a slot costs only its KV cache, 2 on
    torch), ``VOXLINE_LLM_CAPACITY`` (positions per request,
    default 4096). Torch engine only: ``VOXLINE_LLM_MTP`` (MTP drafts per step, default 0),
    ``VOXLINE_LLM_DTYPE`` (``bfloat16`` default — half the memory traffic of float32 and faster on
    AVX512-BF16 CPUs; ``float32``), ``VOXLINE_LLM_QUANT`` (``none`` default; ``int8``: dynamic int8 linear
    layers, about twice the decode speed of bf16 here, but see :func:`quantize_int8`)."""
    env = os.environ.get
    backend = env("VOXLINE_LLM_BACKEND") or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"VOXLINE_LLM_BACKEND={backend!r}; choose one of {', '.join(BACKENDS)}")
    opts = EngineOptions(slots=int(env("VOXLINE_LLM_SLOTS", "4" if backend == "llamacpp" else "2")),
                         capacity=int(env("VOXLINE_LLM_CAPACITY", "4096")),
                         n_draft=int(env("VOXLINE_LLM_MTP", "0")))
    if opts.n_draft and backend != "torch":
        raise ValueError("VOXLINE_LLM_MTP (our MTP drafts) needs VOXLINE_LLM_BACKEND=torch")
    dtype_name = env("VOXLINE_LLM_DTYPE", "bfloat16")
    if dtype_name not in _DTYPES:
        raise ValueError(f"VOXLINE_LLM_DTYPE={dtype_name!r}; choose one of {', '.join(_DTYPES)}")
    quant = env("VOXLINE_LLM_QUANT", "none")
    if quant not in ("none", "int8"):
        raise ValueError(f"VOXLINE_LLM_QUANT={quant!r}; choose none or int8")
    return opts, _DTYPES[dtype_name], quant, backend


def mtp_weights_path(model_id: str) -> Path:
    """Where ``runtime.llm.mtp`` saves the self-distilled MTP modules of ``model_id``."""
    from voxcore.model_cache import cache_root
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


def gguf_tokenizer(model_id: str):
    """The :class:`TextTokenizer` of ``model_id`` built from its GGUF's vocabulary alone (metadata, no tensors:
    llama.cpp needs no converted checkpoint), cached as ``{model}-{sha}-tokenizer.json``."""
    from runtime.llm.embedded import cache_root, gguf_path
    from runtime.llm.tokenizer import TextTokenizer, build_tokenizer

    s = spec(model_id)
    target = cache_root() / f"{model_id}-{s.sha256[:12]}-tokenizer.json"
    if not target.is_file():
        from gguf import GGUFReader

        from runtime.llm.gguf_convert import read_metadata

        meta = read_metadata(GGUFReader(str(gguf_path(model_id))))
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        build_tokenizer(meta).save(str(tmp))
        tmp.replace(target)
    return TextTokenizer(target)


def load_llamacpp_engine(model_id: str, options: EngineOptions | None = None):
    """llama.cpp on the packaged GGUF as it is (no converted checkpoint; only a tokenizer file is cached)."""
    from runtime.llm.chat_format import chat_format
    from runtime.llm.embedded import gguf_path
    from runtime.llm.llamacpp_engine import LlamaCppChatEngine, cpu_supported

    if not cpu_supported():     # checked before xllamacpp is imported: its code would die of SIGILL here
        raise RuntimeError("this CPU lacks the AVX2/FMA/F16C/BMI2 the xllamacpp wheel is built for; "
                           "unset VOXLINE_LLM_BACKEND (or set it to torch)")
    s = spec(model_id)
    tok = gguf_tokenizer(model_id)
    return LlamaCppChatEngine(model_id, gguf_path(model_id), tok, chat_format(s.chat_format, tok),
                              options or EngineOptions(slots=4), description=s.description + " (llama.cpp)")


def load_embedded(model_id: str):
    """Registry entry: the engine for an embedded LLM, configured from the environment."""
    options, dtype, quant, backend = options_from_env()
    if backend == "llamacpp":
        return load_llamacpp_engine(model_id, options)
    if backend == "vllm":
        from runtime.llm.vllm_engine import VLLMChatEngine
        return VLLMChatEngine(model_id, checkpoint_dir(model_id), options)
    return load_torch_engine(model_id, options, dtype, quant=quant)
