"""The unified audio LLM: a Qwen2-style decoder-only backbone plus K MTP modules.

Parameter names follow HF ``Qwen2ForCausalLM`` (``model.embed_tokens``, ``model.layers.N.…``,
``model.norm``, ``lm_head``) so a checkpoint directory written here looks like one vLLM loads. MTP
modules live under ``mtp.N.…`` (DeepSeek-V3 layout: ``enorm``, ``hnorm``, ``eh_proj``, one transformer
block, a final ``norm``); they share the embedding and the output head with the backbone.

MTP module ``k`` (1-based) at position ``i`` predicts token ``i + k + 1``::

    g_i^k = Block_k( W_k [ hnorm(g_i^{k-1}) ; enorm(Emb(t_{i+k})) ] )      g^0 = backbone hidden
    p(t_{i+k+1}) = softmax( lm_head( norm_k(g_i^k) ) )

The model is plain: no decoding policy, no compile/quantisation branches (applied from outside).
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.config import LMConfig
from runtime.layers import Block, LayerKV, RMSNorm, Rotary, attention_mask
from runtime.state import KVCache


class Backbone(nn.Module):
    """Embedding, ``n_layers`` blocks and the final norm (HF's ``Qwen2Model``)."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_eps)


class MTPModule(nn.Module):
    """One multi-token-prediction depth: norms, the [hidden; embedding] projection and one block."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.hnorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.enorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.eh_proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        self.block = Block(cfg)
        self.norm = RMSNorm(cfg.d_model, cfg.rms_eps)


class AudioLM(nn.Module):
    """Decoder-only LM over the joint text+audio vocabulary, with ``config.n_mtp`` MTP modules.

    ``forward(tokens [B, T], positions [B, T], cache) -> hidden [B, T, D]`` (after the final norm);
    ``logits(hidden) -> [B, T, V]``. With ``cache=None`` it is an offline causal forward over the
    given tokens; with a :class:`KVCache` the new keys/values are written at ``positions`` and the
    queries attend to every cached position ``<=`` their own.
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp = nn.ModuleList(MTPModule(cfg) for _ in range(cfg.n_mtp))
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)

    # ---- backbone -------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor | None, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        # inputs_embeds [B, T, D], when given, replaces embed_tokens(tokens) (audio rows spliced in a prompt).
        x = self.model.embed_tokens(tokens) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        b, t = x.shape[:2]
        if positions is None:
            positions = torch.arange(t, device=x.device).expand(b, t)
        rope = self.rotary(positions, x.dtype)
        mask = self._mask(positions, cache)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, mask, positions, None if cache is None else cache.layer(i))
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> logits [..., V]."""
        return self.lm_head(hidden)

    # ---- MTP ----------------------------------------------------------------------------------
    def mtp_forward(self, depth: int, prev_hidden: torch.Tensor, next_tokens: torch.Tensor,
                    positions: torch.Tensor, cache: LayerKV | None = None) -> torch.Tensor:
        """Module ``depth`` (0-based): prev_hidden [B, T, D], next_tokens [B, T] (t_{i+depth+1})
        at positions [B, T] -> g [B, T, D] (before the module's final norm; chained to the next depth)."""
        m = self.mtp[depth]
        e = self.model.embed_tokens(next_tokens)
        x = m.eh_proj(torch.cat([m.hnorm(prev_hidden), m.enorm(e)], dim=-1))  # [B, T, D]
        rope = self.rotary(positions, x.dtype)
        if cache is None:
            mask = attention_mask(positions, positions)
        else:
            mask = attention_mask(positions, torch.arange(cache.k.shape[2], device=positions.device))
        return m.block(x, rope, mask, positions, cache)

    def mtp_logits(self, depth: int, g: torch.Tensor) -> torch.Tensor:
        """g [..., D] from :meth:`mtp_forward` -> draft logits [..., V] (shared output head)."""
        return self.lm_head(self.mtp[depth].norm(g))

    def mtp_offline(self, hidden: torch.Tensor, tokens: torch.Tensor, n_depth: int) -> list[torch.Tensor]:
        """All depths over a whole sequence, no cache (training and reference checks).

        hidden [B, T, D] from :meth:`forward` on tokens[:, :T]; tokens [B, L] with L >= T. Depth k
        (0-based) at position i reads tokens[i + k + 1], so it covers positions
        ``0 .. min(T, L - k - 1) - 1``; entry k of the result is g [B, that many, D], whose logits
        predict tokens ``k+2 ..``.
        """
        b = hidden.shape[0]
        out, g = [], hidden
        for k in range(n_depth):
            length = min(g.shape[1], tokens.shape[1] - k - 1)
            if length <= 0:
                break
            pos = torch.arange(length, device=hidden.device).expand(b, length)
            g = self.mtp_forward(k, g[:, :length], tokens[:, k + 1:k + 1 + length], pos)
            out.append(g)
        return out

    def _mask(self, positions: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        if cache is None:
            return attention_mask(positions, positions)
        return attention_mask(positions, torch.arange(cache.capacity, device=positions.device))


def build_model(cfg: LMConfig, seed: int = 0, init_std: float = 0.02,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> AudioLM:
    """A randomly initialised model, reproducible from ``seed`` (normal(0, init_std) weights, zero
    biases, unit norm gains). Random weights are for tests and mechanics benchmarks only."""
    gen = torch.Generator().manual_seed(seed)
    model = AudioLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * init_std)
    return model.to(device=device, dtype=dtype).eval()
