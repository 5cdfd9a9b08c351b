"""A greedy decode / MTP-verify step of a Qwen2-style decoder built from this package's ops.

It runs on any module tree with HF Qwen2 names and the runtime's rotary tables
(``model.model.embed_tokens``, ``model.model.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp}``, ``model.model.norm``, ``model.logits``, ``model.rotary.{cos,sin}``
and ``model.config`` with ``n_heads, n_kv_heads, head_dim``): ``runtime.model.AudioLM`` qualifies.
Nothing is imported from ``runtime`` (dependencies point downward); the runtime can adopt these ops
from outside, as gpt-fast applies compile and quantisation from outside the model.

Compared with the runtime's ``AudioLM.forward`` with a cache: the residual adds are fused into the
next norm, RoPE and the KV-cache write are one launch, attention reads each slot's cache only up to
its last query position (not the whole capacity under a mask), and verification (argmax, prefix,
next token, length update) is two launches with no host sync. Matrix products stay on torch/cuBLAS.
"""
from __future__ import annotations

import torch

from kernels import ops


@torch.no_grad()
def forward_cached(model, tokens: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """tokens, positions [B, T]; caches [L, B, Hkv, S, Dh] (written at ``positions``) -> hidden
    [B, T, D] after the final norm, as ``AudioLM.forward(tokens, positions, cache)``."""
    cfg = model.config
    b, t = tokens.shape
    nh, nkv, dh = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    cos, sin = model.rotary.cos, model.rotary.sin
    x = model.model.embed_tokens(tokens)                                          # [B, T, D]
    residual = None
    for i, layer in enumerate(model.model.layers):
        norm = layer.input_layernorm
        if residual is None:
            h, residual = ops.rms_norm(x, norm.weight, norm.eps, backend=backend), x
        else:
            h, residual = ops.add_rms_norm(x, residual, norm.weight, norm.eps, backend=backend)
        attn = layer.self_attn
        q = attn.q_proj(h).view(b, t, nh, dh).transpose(1, 2)                      # [B, H, T, Dh]
        k = attn.k_proj(h).view(b, t, nkv, dh).transpose(1, 2)                     # [B, Hkv, T, Dh]
        v = attn.v_proj(h).view(b, t, nkv, dh).transpose(1, 2)
        q, _ = ops.rotary_qk_cache(q, k, positions, cos, sin, v=v, k_cache=k_cache[i], v_cache=v_cache[i],
                                   backend=backend)
        o = ops.decode_attention(q, k_cache[i], v_cache[i], positions, backend=backend)  # [B, H, T, Dh]
        x = attn.o_proj(o.transpose(1, 2).reshape(b, t, nh * dh))
        post = layer.post_attention_layernorm
        h, residual = ops.add_rms_norm(x, residual, post.weight, post.eps, backend=backend)
        x = layer.mlp(h)
    final = model.model.norm
    if residual is None:  # a model with no layers
        return ops.rms_norm(x, final.weight, final.eps, backend=backend)
    return ops.add_rms_norm(x, residual, final.weight, final.eps, backend=backend)[0]


@torch.no_grad()
def verify_step(model, tokens: torch.Tensor, lengths: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                n_draft: int, active: torch.Tensor | None = None, backend: str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The verify half of ``DecodeEngine.step`` for greedy slots (no drafter): feed
    ``tokens[b, n .. n+K]`` (pending token and K drafts) at positions ``n .. n+K``, accept the
    longest prefix matching the argmax, write the next token, move ``lengths`` (in place).

    Returns (n_accepted, next_token, num_new), each [B]; nothing syncs with the host.
    """
    cap = tokens.shape[1]
    offs = torch.arange(n_draft + 1, device=tokens.device)
    vpos = (lengths[:, None] + offs).clamp(max=cap - 1)                           # [B, K+1]
    vtok = tokens.gather(1, vpos)
    hidden = forward_cached(model, vtok, vpos, k_cache, v_cache, backend=backend)
    logits = model.logits(hidden)                                                  # [B, K+1, V]
    return ops.mtp_accept(logits, tokens, lengths, active, backend=backend)
