"""Step-Audio 2 as a vLLM model (out of tree; registered by runtime.step_audio2.vllm_plugin).

vLLM runs the decoding of the Step-Audio 2 LLM — paged KV cache, continuous batching, its samplers and, with
``speculative_config={"method": "mtp", ...}``, our MTP module as its drafter — while our code keeps what vLLM does
not: the audio encoder + adapter (runtime.step_audio2.model / encoder), prompt building, audio-token streaming and
token2wav.

**Audio input.** An audio prompt enters as vLLM prompt embeddings (``LLM(..., enable_prompt_embeds=True)``,
prompt ``{"prompt_embeds": [L, D]}``) computed by our torch port:
``StepAudio2ForCausalLM.embed_prompt(ids, mels, mel_lens)[0]`` — the token embeddings with the adapter rows
written over the ``<audio_patch>`` placeholders (SPEC §6). Text, audio-token (151696 + c) and special-token
prompts can also be given as plain token ids. The model here is the LLM only; the official checkpoint's
``encoder.*`` and ``adapter.*`` tensors are skipped on load (our torch encoder reads them from the same files).

**Weights.** The official names are Qwen2's (``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``model.layers.N.mlp.{gate,up,down}_proj``, norms, untied ``lm_head``), loaded through vLLM's Qwen2 layers, which
fuse q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj`` (``Qwen2Model.load_weights`` maps them).

**MTP.** :class:`StepAudio2MTPModel` is our ``mtp.N.*`` module (runtime.model.MTPModule: ``hnorm``, ``enorm``,
``eh_proj`` over ``[hnorm(h); enorm(e)]``, one Qwen2 block, ``norm``; shared embedding and head) built from vLLM
layers, as the draft model of vLLM's ``mtp`` speculative method. Its input hidden state is the target's output
after the final norm, as ours is (g^0 in runtime.model). vLLM's proposer calls the draft without a depth index and
feeds its *normed* output back into the same module for further drafts, while ours chains depth k's pre-norm state
into module k+1: only depth 1 maps exactly, so use ``num_speculative_tokens=1`` (tests/vllm checks it token for
token and draft for draft; more drafts per step are vLLM's reuse of module 0, untested here).

Not done: pipeline parallel (no ``SupportsPP``); tensor parallel comes with vLLM's Qwen2 layers but is untested.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vllm.config import VllmConfig
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.qwen2 import Qwen2DecoderLayer, Qwen2Model
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, maybe_prefix
from vllm.sequence import IntermediateTensors

#: official-checkpoint tensors that are not the LLM: our torch encoder/adapter load them; the MTP draft loads mtp.*
NOT_LLM_PREFIXES = ("encoder.", "adapter.", "mtp.")


class StepAudio2ForCausalLM(nn.Module):
    """The Step-Audio 2 LLM (Qwen2, untied head, 158720-row joint text+audio vocabulary) on vLLM's Qwen2 layers.

    ``forward(input_ids [N] | None, positions [N], inputs_embeds [N, D] | None) -> hidden [N, D]`` over vLLM's
    flattened batch (after the final norm); ``compute_logits(hidden) -> [N, V]``."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        text = vllm_config.model_config.hf_config.get_text_config()
        if text.tie_word_embeddings:
            raise ValueError("Step-Audio 2 has an untied lm_head; this config says tie_word_embeddings=true")
        self.config = text
        self.model = Qwen2Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(text.vocab_size, text.hidden_size, quant_config=vllm_config.quant_config,
                                      prefix=maybe_prefix(prefix, "lm_head"))
        self.logits_processor = LogitsProcessor(text.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        llm = ((name, w) for name, w in weights if not name.startswith(NOT_LLM_PREFIXES))
        return AutoWeightsLoader(self).load_weights(llm)


class StepAudio2MTPLayer(nn.Module):
    """One of our MTP depths (runtime.model.MTPModule) on vLLM layers; parameter names are ours under ``mtp.N``."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        d = config.hidden_size
        self.hnorm = RMSNorm(d, eps=config.rms_norm_eps)
        self.enorm = RMSNorm(d, eps=config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.block = Qwen2DecoderLayer(config=config, cache_config=vllm_config.cache_config,
                                       quant_config=vllm_config.quant_config, prefix=f"{prefix}.block")
        self.norm = RMSNorm(d, eps=config.rms_norm_eps)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor,
                previous_hidden_states: torch.Tensor) -> torch.Tensor:
        """e = Emb(t_{i+1}) [N, D], h = the target's normed hidden at i [N, D] -> norm(g) [N, D], runtime.model.AudioLM.mtp_forward's formula."""
        x = self.eh_proj(torch.cat([self.hnorm(previous_hidden_states), self.enorm(inputs_embeds)], dim=-1))
        out, residual = self.block(positions=positions, hidden_states=x, residual=None)
        return self.norm(out + residual)


class StepAudio2MTPHeads(nn.Module):
    """The shared embedding and the ``mtp`` modules (``.model`` of the draft, where vLLM's proposer looks for the
    embedding to share with the target)."""

    def __init__(self, config, vllm_config: VllmConfig, prefix: str, n_mtp: int) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=maybe_prefix(prefix, "embed_tokens"))
        self.mtp = nn.ModuleList(StepAudio2MTPLayer(config, vllm_config, f"{maybe_prefix(prefix, 'mtp')}.{k}")
                                 for k in range(n_mtp))


class StepAudio2MTPModel(nn.Module):
    """Our ``mtp.N.*`` modules as the draft model of vLLM's ``mtp`` speculative method.

    Built from the target's own checkpoint directory (vLLM's ``mtp`` method does that); the embedding and the
    output head are loaded too, and then replaced by the target's (vLLM's proposer shares them with an MTP draft,
    as runtime.model shares them). vLLM's proposer calls ``forward`` without a depth index, so every draft comes
    from module 0 (see the module doc: only depth 1 maps exactly)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        text = vllm_config.model_config.hf_config.get_text_config()
        self.config = text
        n_mtp = int(getattr(text, "num_nextn_predict_layers", 0) or 0)
        if n_mtp < 1:
            raise ValueError("this Step-Audio 2 checkpoint has no MTP modules (text_config.num_nextn_predict_layers)")
        self.model = StepAudio2MTPHeads(text, vllm_config, maybe_prefix(prefix, "model"), n_mtp)
        self.lm_head = ParallelLMHead(text.vocab_size, text.hidden_size, prefix=maybe_prefix(prefix, "lm_head"))
        self.logits_processor = LogitsProcessor(text.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, hidden_states: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None, inputs_embeds: torch.Tensor | None = None,
                spec_step_idx: int = 0) -> torch.Tensor:
        """input_ids [N] (t_{i+1}, vLLM shifts them), hidden_states [N, D] (the target's at i) -> norm(g) [N, D]."""
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        layer = self.model.mtp[min(spec_step_idx, len(self.model.mtp) - 1)]
        return layer(inputs_embeds, positions, hidden_states)

    def compute_logits(self, hidden_states: torch.Tensor, spec_step_idx: int = 0) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """``mtp.N.*`` (q/k/v and gate/up fused as in vLLM's Qwen2), ``model.embed_tokens`` and ``lm_head``."""
        mapper = WeightsMapper(
            orig_to_new_stacked={".q_proj": (".qkv_proj", "q"), ".k_proj": (".qkv_proj", "k"),
                                 ".v_proj": (".qkv_proj", "v"), ".gate_proj": (".gate_up_proj", 0),
                                 ".up_proj": (".gate_up_proj", 1)},
            orig_to_new_prefix={"mtp.": "model.mtp."})
        keep = (name_w for name_w in weights
                if name_w[0].startswith(("mtp.", "model.embed_tokens.", "lm_head.")))
        return AutoWeightsLoader(self).load_weights(keep, mapper=mapper)
