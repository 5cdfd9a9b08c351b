"""Step-Audio 2 config: the official nested ``config.json`` read into an :class:`LMConfig` plus the audio encoder's sizes.

The official file nests a Qwen2 ``text_config`` and an ``audio_encoder_config`` (golden SPEC.md §4, §5, §7); a flat
Qwen2 config (the golden ``llm/config.json``) is read as the LLM alone, with no encoder. The LLM part becomes an
:class:`LMConfig` so runtime/engine.DecodeEngine runs it unchanged. Its joint vocabulary is Step-Audio 2's (§2):
text ids below 151688, the specials 151688..151695, audio code c at 151696 + c for the 6561 codes, padding rows up
to 158720. Step-Audio 2 has no linguistic codebook (``linguistic_size = 0``) and no MTP modules unless the config
says ``num_nextn_predict_layers``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.config import LMConfig

TEXT_VOCAB_SIZE = 151688      # ids below are Qwen2 BPE text; 151688 is <audio_start> (SPEC §2)
AUDIO_OFFSET = 151696         # <audio_0>: audio code c is id 151696 + c (SPEC §2)
N_AUDIO_CODES = 6561          # 3^8 S3 codes; id 151696 + 6561 = 158257 is <audio_6561>, the pad
ADAPTER_HIDDEN = 2048         # adapter.linear1 width, hard-coded in the reference (SPEC §5)

_REQUIRED_TEXT = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads")
_REQUIRED_AUDIO = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "llm_dim")


class StepAudio2ConfigError(ValueError):
    """A config.json that does not describe a Step-Audio 2 model (missing or inconsistent keys)."""


@dataclass(frozen=True)
class AudioEncoderConfig:
    """Whisper-style encoder (SPEC §4) and adapter (§5) sizes, in the official key names."""

    n_mels: int = 128
    n_audio_ctx: int = 1500          # rows of the learned positional table
    n_audio_state: int = 1280        # encoder width W
    n_audio_head: int = 20
    n_audio_layer: int = 32
    llm_dim: int = 3584              # adapter output = LLM hidden size
    kernel_size: int = 3             # adapter conv
    adapter_stride: int = 2
    adapter_hidden: int = ADAPTER_HIDDEN

    def __post_init__(self) -> None:
        if self.n_audio_state % self.n_audio_head:
            raise StepAudio2ConfigError(f"audio_encoder_config: n_audio_state={self.n_audio_state} is not a "
                                        f"multiple of n_audio_head={self.n_audio_head}")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StepAudio2Config:
    """The LLM (``lm``, an :class:`LMConfig`) and the audio encoder + adapter (``audio``; None for a text-only LLM)."""

    lm: LMConfig
    audio: AudioEncoderConfig | None = None

    def __post_init__(self) -> None:
        if self.audio is not None and self.audio.llm_dim != self.lm.d_model:
            raise StepAudio2ConfigError(f"audio_encoder_config.llm_dim={self.audio.llm_dim} differs from "
                                        f"text_config.hidden_size={self.lm.d_model}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config.json") -> "StepAudio2Config":
        """The official nested dict (``text_config`` + ``audio_encoder_config``) or a flat Qwen2 dict (text only)."""
        text = raw.get("text_config", raw)
        if not isinstance(text, dict):
            raise StepAudio2ConfigError(f"{where}: text_config must be an object")
        lm = lm_config_from_qwen2(text, where=f"{where} text_config" if "text_config" in raw else where)
        audio_raw = raw.get("audio_encoder_config")
        audio = None if audio_raw is None else audio_config_from_dict(audio_raw, where=f"{where} audio_encoder_config")
        return cls(lm=lm, audio=audio)

    def to_dict(self) -> dict[str, Any]:
        """The official layout: Qwen2 ``text_config`` (with our vocabulary fields) and ``audio_encoder_config``."""
        text = self.lm.to_hf_dict()
        text.pop("architectures", None)
        text["head_dim"] = self.lm.head_dim
        out: dict[str, Any] = {"architectures": ["StepAudio2ForCausalLM"], "model_type": "step_audio_2",
                               "text_config": text}
        if self.audio is not None:
            out["audio_encoder_config"] = self.audio.to_dict()
        return out


def _missing(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    absent = [k for k in keys if k not in raw]
    if absent:
        raise StepAudio2ConfigError(f"{where}: missing keys {', '.join(absent)}")


def lm_config_from_qwen2(text: dict[str, Any], where: str = "text_config") -> LMConfig:
    """A Qwen2 config dict -> :class:`LMConfig` with Step-Audio 2's vocabulary layout (SPEC §2, §7).

    Sizes are required; rope theta (1e6), RMS eps (1e-6) and max positions (16384) default to the SPEC's values.
    The vocabulary fields may be given explicitly (ours, as :meth:`LMConfig.to_hf_dict` writes them)."""
    _missing(text, _REQUIRED_TEXT, where)
    heads = int(text["num_attention_heads"])
    kwargs = dict(
        vocab_size=int(text["vocab_size"]),
        d_model=int(text["hidden_size"]),
        ffn_dim=int(text["intermediate_size"]),
        n_layers=int(text["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(text["num_key_value_heads"]),
        head_dim=int(text.get("head_dim") or int(text["hidden_size"]) // heads),
        rope_theta=float(text.get("rope_theta", 1e6)),
        rms_eps=float(text.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(text.get("tie_word_embeddings", False)),
        max_seq_len=int(text.get("max_position_embeddings", 16384)),
        qkv_bias=bool(text.get("attention_bias_qkv", text.get("qkv_bias", True))),
        n_mtp=int(text.get("num_nextn_predict_layers") or 0),
        text_vocab_size=int(text.get("text_vocab_size", TEXT_VOCAB_SIZE)),
        audio_offset=int(text.get("audio_offset", AUDIO_OFFSET)),
        linguistic_size=int(text.get("linguistic_size", 0)),
        semantic_size=int(text.get("semantic_size", N_AUDIO_CODES)),
    )
    if text.get("rope_scaling"):
        raise StepAudio2ConfigError(f"{where}: rope_scaling={text['rope_scaling']!r} is not supported "
                                    "(Step-Audio 2 uses plain RoPE, SPEC §7)")
    if text.get("attention_bias_o"):
        raise StepAudio2ConfigError(f"{where}: attention_bias_o=true is not Qwen2 (o_proj has no bias, SPEC §7)")
    try:
        return LMConfig(**kwargs)
    except ValueError as exc:
        raise StepAudio2ConfigError(f"{where}: {exc}") from exc


def audio_config_from_dict(raw: dict[str, Any], where: str = "audio_encoder_config") -> AudioEncoderConfig:
    if not isinstance(raw, dict):
        raise StepAudio2ConfigError(f"{where}: must be an object")
    _missing(raw, _REQUIRED_AUDIO, where)
    known = AudioEncoderConfig.__dataclass_fields__
    return AudioEncoderConfig(**{k: int(v) for k, v in raw.items() if k in known})
