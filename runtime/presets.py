"""Model presets built in code, and a lazy registry of model builders by name.

``tiny``  — the real architecture at test sizes, random weights from a fixed seed (tests, mechanics).
``bench`` — a CPU-benchmark size where the backbone dominates the cost of a decode step.

Random weights are never speech quality; say so wherever a figure uses them. Real checkpoints load
from a local directory with :func:`load_model` (``step-audio`` preset in DESIGN.md §4).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from runtime.config import LMConfig

TINY_SEED = 1234

# name -> "module:function"; resolved only when asked for, so importing this loads nothing heavy.
REGISTRY: dict[str, str] = {
    "tiny": "runtime.presets:build_tiny",
    "bench": "runtime.presets:build_bench",
}


def tiny_config(**overrides: Any) -> LMConfig:
    """Tiny sizes over a small joint vocabulary (64 text ids, then 1024 + 4096 audio codes)."""
    base = dict(text_vocab_size=64, audio_offset=64, linguistic_size=1024, semantic_size=4096,
                vocab_size=64 + 1024 + 4096, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                ffn_dim=160, max_seq_len=1024, n_mtp=3, qkv_bias=True, tie_embeddings=False,
                rope_theta=10_000.0)
    base.update(overrides)
    if "vocab_size" not in overrides:
        base["vocab_size"] = base["audio_offset"] + base["linguistic_size"] + base["semantic_size"]
    return LMConfig(**base)


def bench_config(**overrides: Any) -> LMConfig:
    """16 layers of d_model 384 (tied embeddings) with a 256-id text vocabulary, ~30 M parameters.

    On this CPU a 1-token forward is bound by reading the weights and each extra verified token
    adds ~13% (measured), and the K MTP blocks plus K output-head passes over the 5.4k joint
    vocabulary cost about one backbone layer's worth each; the depth keeps the backbone dominant."""
    base = dict(text_vocab_size=256, audio_offset=256, d_model=384, n_layers=16, n_heads=6, n_kv_heads=2,
                ffn_dim=1024, max_seq_len=2048, tie_embeddings=True)
    base.update(overrides)
    return tiny_config(**base)


def build_tiny(seed: int = TINY_SEED, init_std: float = 0.02, **overrides: Any):
    """The ``tiny`` preset: :func:`tiny_config` with random weights from ``seed``."""
    from runtime.model import build_model
    return build_model(tiny_config(**overrides), seed=seed, init_std=init_std)


# With tied embeddings (as Qwen2-0.5B), random backbones' greedy continuations settle into short
# cycles at init std 0.03-0.035 and are chaotic (nothing an MTP module could learn) from 0.05.
# bench/RESULTS.md reports how predictable the chosen one is.
BENCH_INIT_STD = 0.035


def build_bench(seed: int = TINY_SEED, init_std: float = BENCH_INIT_STD, **overrides: Any):
    """The ``bench`` preset: :func:`bench_config` with random weights from ``seed``."""
    from runtime.model import build_model
    return build_model(bench_config(**overrides), seed=seed, init_std=init_std)


def resolve(name: str) -> Callable[..., Any]:
    """The builder registered under ``name`` (imported on first use)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))} "
                       f"(or pass a checkpoint directory)")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def load_model(name_or_path: str, **kwargs: Any):
    """A registered preset by name (names win over same-named folders), or an HF-style checkpoint
    directory by path."""
    if name_or_path not in REGISTRY and Path(name_or_path).is_dir():
        from runtime.checkpoint import load_checkpoint
        return load_checkpoint(name_or_path, **kwargs)
    return resolve(name_or_path)(**kwargs)
