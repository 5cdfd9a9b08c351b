"""Architecture config of the unified audio LLM (travels with the checkpoint as ``config.json``).

The joint vocabulary is laid out the way Step-Audio does it::

    [0, text_vocab_size)                                  text ids (tokenizer of the base LLM)
    [audio_offset, audio_offset + linguistic_size)        linguistic codes (16.7 Hz, 1024 codes)
    [audio_offset + linguistic_size, ... + semantic_size) semantic codes (25 Hz, 4096 codes)

Step-Audio uses ``audio_offset = 65536``; the ``tiny`` preset uses a small text vocabulary so that the
output head stays cheap on CPU. ``vocab_size`` may be larger than the last audio id (padding rows).

``config.json`` uses the Qwen2 field names (``hidden_size``, ``num_hidden_layers`` ...) so that a
checkpoint saved here is shaped like one vLLM can serve; the extra fields are ours
(``num_nextn_predict_layers`` is DeepSeek-V3's name for the number of MTP modules).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# HF / Qwen2 name -> our field name.
_HF_NAMES = {
    "vocab_size": "vocab_size",
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "intermediate_size": "ffn_dim",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_eps",
    "tie_word_embeddings": "tie_embeddings",
    "max_position_embeddings": "max_seq_len",
    "num_nextn_predict_layers": "n_mtp",
}
# Fields stored under their own names (no HF equivalent).
_OWN_NAMES = ("head_dim", "qkv_bias", "text_vocab_size", "audio_offset", "linguistic_size",
              "semantic_size")


@dataclass(frozen=True)
class LMConfig:
    """Sizes of the decoder-only backbone, its MTP modules and the joint text+audio vocabulary."""

    vocab_size: int = 70656            # >= audio_offset + linguistic_size + semantic_size
    text_vocab_size: int = 65536
    audio_offset: int = 65536
    linguistic_size: int = 1024
    semantic_size: int = 4096
    d_model: int = 1024
    n_layers: int = 16
    n_heads: int = 16
    n_kv_heads: int = 4
    head_dim: int = 0                  # 0 -> d_model // n_heads
    ffn_dim: int = 2816
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    qkv_bias: bool = True              # Qwen2 has a bias on q/k/v only
    tie_embeddings: bool = False
    max_seq_len: int = 4096
    n_mtp: int = 3                     # K MTP modules (Step 3.5 Flash: MTP-3)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        problems = []
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.audio_offset < self.text_vocab_size:
            problems.append("audio_offset must be >= text_vocab_size (audio ids follow the text ids)")
        if self.audio_end > self.vocab_size:
            problems.append(f"vocab_size={self.vocab_size} is smaller than the last audio id "
                            f"{self.audio_end}; raise vocab_size")
        if self.n_mtp < 0:
            problems.append("n_mtp must be >= 0")
        if problems:
            raise ValueError("invalid LMConfig: " + "; ".join(problems))

    # ---- joint vocabulary -------------------------------------------------------------------------
    @property
    def semantic_offset(self) -> int:
        return self.audio_offset + self.linguistic_size

    @property
    def audio_end(self) -> int:
        return self.semantic_offset + self.semantic_size

    def linguistic_id(self, code: int) -> int:
        """LLM id of linguistic code ``code`` (Step-Audio: ``65536 + code``)."""
        if not 0 <= code < self.linguistic_size:
            raise ValueError(f"linguistic code {code} outside [0, {self.linguistic_size})")
        return self.audio_offset + code

    def semantic_id(self, code: int) -> int:
        """LLM id of semantic code ``code`` (Step-Audio: ``65536 + 1024 + code``)."""
        if not 0 <= code < self.semantic_size:
            raise ValueError(f"semantic code {code} outside [0, {self.semantic_size})")
        return self.semantic_offset + code

    def token_kind(self, token_id: int) -> str:
        """'text', 'linguistic', 'semantic' or 'other' (padding / special rows)."""
        if token_id < self.text_vocab_size:
            return "text"
        if self.audio_offset <= token_id < self.semantic_offset:
            return "linguistic"
        if self.semantic_offset <= token_id < self.audio_end:
            return "semantic"
        return "other"

    # ---- config.json ------------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """Qwen2-style ``config.json`` content plus our own fields."""
        out: dict[str, Any] = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "torch_dtype": "float32",
        }
        for hf, ours in _HF_NAMES.items():
            out[hf] = getattr(self, ours)
        for name in _OWN_NAMES:
            out[name] = getattr(self, name)
        return out

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> "LMConfig":
        """Build from a ``config.json`` dict; unknown keys are ignored, missing ones take defaults.

        A plain Qwen2 config (no audio fields) is read as a text-only model with no audio ids:
        pass the audio fields explicitly when loading a Step-Audio checkpoint.
        """
        kwargs: dict[str, Any] = {}
        for hf, ours in _HF_NAMES.items():
            if hf in raw:
                kwargs[ours] = raw[hf]
        for name in _OWN_NAMES:
            if name in raw:
                kwargs[name] = raw[name]
        if "text_vocab_size" not in raw and "vocab_size" in raw:
            # Text-only checkpoint: every id is text, no audio rows.
            kwargs.setdefault("text_vocab_size", raw["vocab_size"])
            kwargs.setdefault("audio_offset", raw["vocab_size"])
            kwargs.setdefault("linguistic_size", 0)
            kwargs.setdefault("semantic_size", 0)
        if "n_mtp" not in kwargs:
            kwargs["n_mtp"] = 0
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in known})

    def replace(self, **changes: Any) -> "LMConfig":
        return dataclasses.replace(self, **changes)
