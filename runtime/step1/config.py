"""Config of the Step1 LLM of Step-Audio-TTS-3B / Step-Audio-EditX (SPEC step_audio_v1 §6).

Read from and written to the official ``config.json`` field names (``hidden_size``,
``num_attention_groups`` ...). The same object also answers the attribute names our decode machinery
reads from ``model.config`` (``d_model``, ``n_layers``, ``n_kv_heads``, ``head_dim``, ``vocab_size``,
``max_seq_len``, ``n_mtp``; see :class:`runtime.state.DecodeState` and :class:`runtime.engine.DecodeEngine`),
so a Step1 model runs in the realtime engine unchanged. Step1 has no MTP modules (``n_mtp = 0``).

Defaults are the real sizes as far as they are known (vLLM ``Step1Config`` defaults, SPEC §6); whether the
real checkpoint ties ``lm_head`` to the embedding is unknown (SPEC §12), so it is read from the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Official ``config.json`` keys, all of them fields of :class:`Step1Config` under the same name.
_OFFICIAL_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_attention_groups",
                  "num_hidden_layers", "max_seq_len", "vocab_size", "rms_norm_eps", "bos_token_id",
                  "eos_token_id", "pad_token_id", "tie_word_embeddings")


@dataclass(frozen=True)
class Step1Config:
    """Sizes of a Step1 decoder (official names) plus the engine-facing aliases as properties."""

    hidden_size: int = 3072
    intermediate_size: int = 8192
    num_attention_heads: int = 48
    num_attention_groups: int = 4       # KV heads (grouped-query attention)
    num_hidden_layers: int = 32
    max_seq_len: int = 32768
    vocab_size: int = 74752
    rms_norm_eps: float = 1e-5
    bos_token_id: int = 1
    eos_token_id: int = 3
    pad_token_id: int = 0
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size={self.hidden_size} is not a multiple of "
                            f"num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_attention_groups:
            problems.append(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                            f"num_attention_groups={self.num_attention_groups}")
        if min(self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size,
               self.max_seq_len, self.num_attention_groups) <= 0:
            problems.append("sizes must be positive")
        if problems:
            raise ValueError("invalid Step1Config: " + "; ".join(problems))

    # ---- what runtime.state / runtime.engine read from model.config ----------------------------
    @property
    def d_model(self) -> int:
        return self.hidden_size

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return self.num_attention_groups

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_dim(self) -> int:
        return self.intermediate_size

    @property
    def rms_eps(self) -> float:
        return self.rms_norm_eps

    @property
    def tie_embeddings(self) -> bool:
        return self.tie_word_embeddings

    @property
    def n_mtp(self) -> int:
        return 0

    # ---- config.json ----------------------------------------------------------------------------
    def to_official_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The official ``config.json`` content (``architectures`` / ``model_type`` as the HF remote code)."""
        out: dict[str, Any] = {"architectures": ["Step1ForCausalLM"], "model_type": "step1"}
        out.update({k: getattr(self, k) for k in _OFFICIAL_KEYS})
        out["torch_dtype"] = torch_dtype
        return out

    @classmethod
    def from_official_dict(cls, raw: dict[str, Any], tie_default: bool = False) -> "Step1Config":
        """From a ``config.json`` dict. Keys we do not model (``architectures``, ``auto_map`` ...) are
        ignored. ``tie_default`` stands in for a missing ``tie_word_embeddings``: HF and vLLM would tie,
        the vllm-omni EditX port would not (SPEC §6), so the loader passes "the file has no lm_head"."""
        model_type = raw.get("model_type", "step1")
        if model_type != "step1":
            raise ValueError(f"config.json has model_type {model_type!r}, expected 'step1'")
        kwargs = {k: raw[k] for k in _OFFICIAL_KEYS if k in raw}
        kwargs.setdefault("tie_word_embeddings", tie_default)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "Step1Config":
        return dataclasses.replace(self, **changes)
