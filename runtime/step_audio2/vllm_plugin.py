"""vLLM plugin entry point (pyproject ``[project.entry-points."vllm.general_plugins"]``): Step-Audio 2 out of tree.

vLLM calls :func:`register` in every process it starts (front end, engine core, workers) before it reads a model
config, so a Step-Audio 2 checkpoint directory in the official layout loads with a plain ``vllm.LLM(path)``:

* the architecture named in the official ``config.json`` (``StepAudio2ForCausalLM``) maps, lazily by a
  ``"module:Class"`` string, onto :class:`runtime.step_audio2.vllm_model.StepAudio2ForCausalLM` (nothing heavy is
  imported here: vLLM imports the model module in the worker when it builds the model);
* the config's ``model_type`` ``step_audio_2`` (unknown to transformers, which would otherwise ask for the
  release's remote code) is registered with transformers as :class:`StepAudio2HFConfig`: the nested Qwen2
  ``text_config`` becomes a ``Qwen2Config`` that ``get_text_config()`` returns, which is what vLLM sizes the KV
  cache and the Qwen2 layers from; ``audio_encoder_config`` is kept as the plain dict (the encoder runs in our code);
* vLLM's ``mtp`` speculative method (``speculative_config={"method": "mtp", "num_speculative_tokens": 1}``) builds
  its draft from the target's own directory and turns the target config into the draft's in
  ``SpeculativeConfig.hf_config_override``, a closed per-architecture list with no hook for out-of-tree models
  (an unknown architecture ends in ``NotImplementedError: Unsupported speculative method: 'mtp'``). :func:`register`
  wraps that static method: for ``StepAudio2ForCausalLM`` it names our draft class (``StepAudio2MTPModel``) and
  the MTP ``model_type``, and hands every other config to vLLM's own override unchanged.

Registering twice is harmless (vLLM may load plugins more than once per process).
"""
from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen2Config

ARCHITECTURE = "StepAudio2ForCausalLM"          # config.json "architectures" of the release (SPEC §7)
MODEL_TYPE = "step_audio_2"                     # config.json "model_type" of the release
MODEL_CLASS = "runtime.step_audio2.vllm_model:StepAudio2ForCausalLM"
MTP_ARCHITECTURE = "StepAudio2MTPModel"         # our mtp.N.* modules as vLLM's "mtp" drafter (see vllm_model)
MTP_CLASS = "runtime.step_audio2.vllm_model:StepAudio2MTPModel"


class StepAudio2HFConfig(PretrainedConfig):
    """The official nested config.json for transformers/vLLM: Qwen2 ``text_config`` + ``audio_encoder_config``."""

    model_type = MODEL_TYPE
    sub_configs = {"text_config": Qwen2Config}

    def __init__(self, text_config: dict[str, Any] | Qwen2Config | None = None,
                 audio_encoder_config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if isinstance(text_config, dict):
            text_config = Qwen2Config(**text_config)
        self.text_config = text_config if text_config is not None else Qwen2Config()
        self.audio_encoder_config = audio_encoder_config
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> Qwen2Config:
        return self.text_config


def draft_config_override(hf_config: PretrainedConfig) -> PretrainedConfig:
    """vLLM's ``SpeculativeConfig.hf_config_override`` with Step-Audio 2's MTP draft added (see the module doc).

    Module-level, so the draft ``ModelConfig`` that holds it pickles to vLLM's engine-core process."""
    if (hf_config.architectures or [None])[0] != ARCHITECTURE:
        return _vllm_draft_config_override(hf_config)
    text = hf_config.get_text_config()
    n_mtp = int(getattr(text, "num_nextn_predict_layers", 0) or 0)
    hf_config.model_type = "mtp"            # one of vLLM's MTPModelTypes: marks the draft as an MTP head
    hf_config.update({"n_predict": n_mtp, "architectures": [MTP_ARCHITECTURE]})
    return hf_config


def _vllm_draft_config_override(hf_config: PretrainedConfig) -> PretrainedConfig:
    from vllm.config.speculative import SpeculativeConfig

    return getattr(SpeculativeConfig, "_voxline_vllm_hf_config_override")(hf_config)


def register() -> None:
    """Make vLLM and transformers know Step-Audio 2 (idempotent)."""
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.config.speculative import SpeculativeConfig

    AutoConfig.register(MODEL_TYPE, StepAudio2HFConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
    if MTP_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(MTP_ARCHITECTURE, MTP_CLASS)
    if not hasattr(SpeculativeConfig, "_voxline_vllm_hf_config_override"):
        SpeculativeConfig._voxline_vllm_hf_config_override = staticmethod(SpeculativeConfig.hf_config_override)
        SpeculativeConfig.hf_config_override = staticmethod(draft_config_override)
