"""Step1, the LLM of Step-Audio-TTS-3B and Step-Audio-EditX (SPEC step_audio_v1 §6): config, model, checkpoints.

``load_step1(folder)`` gives a :class:`Step1ForCausalLM` with AudioLM's ``forward`` / ``logits`` interface,
which :class:`runtime.engine.DecodeEngine` drives like any of our LMs.
"""

from runtime.step1.checkpoint import TINY_STEP1, load_step1, save_step1, write_tiny_step1
from runtime.step1.config import Step1Config
from runtime.step1.model import Step1ForCausalLM, alibi_slopes, sqrt_alibi_bias

__all__ = ["TINY_STEP1", "Step1Config", "Step1ForCausalLM", "alibi_slopes", "load_step1", "save_step1",
           "sqrt_alibi_bias", "write_tiny_step1"]
