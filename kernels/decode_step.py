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
next token, length update) is two launches with no host sync. Matrix products stay on torch/cuBLAS;
with :func:`pack_projections` (as vLLM's QKV and merged gate/up layers) each layer makes two wide
products where it made five narrow ones: at one decode row a product is a few microseconds of weight
reading plus a fixed cost per launch, and the narrow q/k/v products are mostly fixed cost (measured,
``bench/RESULTS.md``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import ops


@dataclass
class PackedLayer:
    qkv_weight: torch.Tensor            # [(H + 2 Hkv) Dh, D]: q, k, v rows stacked
    qkv_bias: torch.Tensor | None
    gate_up_weight: torch.Tensor        # [2 F, D]: gate rows, then up rows


@torch.no_grad()
def pack_projections(model) -> list[PackedLayer]:
    """Concatenated copies of each layer's q/k/v and gate/up weights (built once; the originals stay
    as they are, so this costs those weights' memory a second time)."""
    packed = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        bias = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        packed.append(PackedLayer(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), bias,
                                  torch.cat([m.gate_proj.weight, m.up_proj.weight])))
    return packed


@torch.no_grad()
def forward_cached(model, tokens: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, backend: str | None = None,
                   packed: list[PackedLayer] | None = None) -> torch.Tensor:
    """tokens, positions [B, T]; caches [L, B, Hkv, S, Dh] (written at ``positions``) -> hidden
    [B, T, D] after the final norm, as ``AudioLM.forward(tokens, positions, cache)``. ``packed``
    (from :func:`pack_projections`) switches to the fused q/k/v and gate/up products."""
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
        if packed is None:
            q = attn.q_proj(h).view(b, t, nh, dh).transpose(1, 2)                  # [B, H, T, Dh]
            k = attn.k_proj(h).view(b, t, nkv, dh).transpose(1, 2)                 # [B, Hkv, T, Dh]
            v = attn.v_proj(h).view(b, t, nkv, dh).transpose(1, 2)
        else:
            qkv = F.linear(h, packed[i].qkv_weight, packed[i].qkv_bias).view(b, t, nh + 2 * nkv, dh)
            q = qkv[:, :, :nh].transpose(1, 2)
            k = qkv[:, :, nh:nh + nkv].transpose(1, 2)
            v = qkv[:, :, nh + nkv:].transpose(1, 2)
        q, _ = ops.rotary_qk_cache(q, k, positions, cos, sin, v=v, k_cache=k_cache[i], v_cache=v_cache[i],
                                   backend=backend)
        o = ops.decode_attention(q, k_cache[i], v_cache[i], positions, backend=backend)  # [B, H, T, Dh]
        x = attn.o_proj(o.transpose(1, 2).reshape(b, t, nh * dh))
        post = layer.post_attention_layernorm
        h, residual = ops.add_rms_norm(x, residual, post.weight, post.eps, backend=backend)
        if packed is None:
            x = layer.mlp(h)
        else:
            gate, up = F.linear(h, packed[i].gate_up_weight).chunk(2, dim=-1)
            x = layer.mlp.down_proj(F.silu(gate) * up)
    final = model.model.norm
    if residual is None:  # a model with no layers
        return ops.rms_norm(x, final.weight, final.eps, backend=backend)
    return ops.add_rms_norm(x, residual, final.weight, final.eps, backend=backend)[0]


@torch.no_grad()
def verify_step(model, tokens: torch.Tensor, lengths: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                n_draft: int, active: torch.Tensor | None = None, backend: str | None = None,
                packed: list[PackedLayer] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The verify half of ``DecodeEngine.step`` for greedy slots (no drafter): feed
    ``tokens[b, n .. n+K]`` (pending token and K drafts) at positions ``n .. n+K``, accept the
    longest prefix matching the argmax, write the next token, move ``lengths`` (in place).

    Returns (n_accepted, next_token, num_new), each [B]; nothing syncs with the host.
    """
    cap = tokens.shape[1]
    offs = torch.arange(n_draft + 1, device=tokens.device)
    vpos = (lengths[:, None] + offs).clamp(max=cap - 1)                           # [B, K+1]
    vtok = tokens.gather(1, vpos)
    hidden = forward_cached(model, vtok, vpos, k_cache, v_cache, backend=backend, packed=packed)
    logits = model.logits(hidden)                                                  # [B, K+1, V]
    return ops.mtp_accept(logits, tokens, lengths, active, backend=backend)
