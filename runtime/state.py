"""Preallocated decode state: KV caches and per-slot buffers with a leading batch (slot) dimension.

A session owns one slot ``b``. Everything a slot needs between steps lives in these tensors, so many
sessions share one model and one set of buffers; a session joins or leaves by resetting its slot.

Invariants for slot ``b`` with ``n = lengths[b]`` (these are what the engine and the tests rely on):

* the backbone KV cache holds valid entries at positions ``[0, n)``;
* ``tokens[b, :n+1]`` are the committed tokens; ``tokens[b, n]`` is the *pending* token (sampled,
  not yet fed to the backbone) once the slot has produced one;
* ``tokens[b, n+1 : n+1+K]`` are the current MTP drafts (when MTP decoding is on);
* MTP module ``k`` (1-based) holds valid KV entries at positions ``[0, n-k]``;
* ``hidden`` is a ring of the backbone's last hidden states, position ``p`` at ``p % ring``,
  valid for the last ``ring`` positions below ``n``.

Everything at or beyond those bounds is stale and masked by position in attention, so rolling back
a rejected draft is only a change of ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.layers import LayerKV


class KVCache:
    """KV buffers for ``n_layers`` layers: ``k, v [L, B, H_kv, S, Dh]``, allocated once."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v

    @classmethod
    def allocate(cls, n_layers: int, batch: int, n_kv: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> "KVCache":
        shape = (n_layers, batch, n_kv, capacity, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def layer(self, i: int) -> LayerKV:
        return LayerKV(self.k[i], self.v[i])

    def slots(self, start: int, stop: int) -> "KVCache":
        """A view on slots ``[start, stop)``; writes go to the shared buffers."""
        return KVCache(self.k[:, start:stop], self.v[:, start:stop])


@dataclass
class DecodeState:
    """All per-slot decode tensors (see the module docstring for the invariants)."""

    kv: KVCache                         # backbone, [n_layers, B, Hkv, S, Dh]
    mtp_kv: KVCache | None              # one block per MTP module, [n_mtp, B, Hkv, S, Dh]
    tokens: torch.Tensor                # [B, S] long: committed tokens, pending token, drafts
    lengths: torch.Tensor               # [B] long: n, number of positions in the backbone cache
    hidden: torch.Tensor                # [B, R, D] ring of backbone hidden states (post final norm)
    draft_probs: torch.Tensor | None    # [B, K, V] draft distributions q (sampling only)

    @classmethod
    def allocate(cls, model, batch: int, capacity: int, n_draft: int, sampling: bool = False,
                 dtype: torch.dtype | None = None) -> "DecodeState":
        """Buffers for ``batch`` slots of ``capacity`` positions and up to ``n_draft`` MTP drafts."""
        cfg = model.config
        if capacity > cfg.max_seq_len:
            raise ValueError(f"capacity {capacity} exceeds max_seq_len {cfg.max_seq_len}")
        if n_draft > cfg.n_mtp:
            raise ValueError(f"n_draft={n_draft} but the model has only {cfg.n_mtp} MTP modules")
        p = next(model.parameters())
        dtype = dtype or p.dtype
        dev = p.device
        kv = KVCache.allocate(cfg.n_layers, batch, cfg.n_kv_heads, capacity, cfg.head_dim, dtype, dev)
        mtp_kv = (KVCache.allocate(n_draft, batch, cfg.n_kv_heads, capacity, cfg.head_dim, dtype, dev)
                  if n_draft else None)
        ring = max(2 * n_draft, 1)  # the MTP window reads positions [n-K+1, n+K]: 2K distinct slots
        return cls(
            kv=kv, mtp_kv=mtp_kv,
            tokens=torch.zeros(batch, capacity, dtype=torch.long, device=dev),
            lengths=torch.zeros(batch, dtype=torch.long, device=dev),
            hidden=torch.zeros(batch, ring, cfg.d_model, dtype=dtype, device=dev),
            draft_probs=(torch.zeros(batch, n_draft, cfg.vocab_size, dtype=dtype, device=dev)
                         if sampling and n_draft else None),
        )

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def capacity(self) -> int:
        return self.tokens.shape[1]

    @property
    def n_draft(self) -> int:
        return 0 if self.mtp_kv is None else self.mtp_kv.k.shape[0]

    @property
    def ring(self) -> int:
        return self.hidden.shape[1]

    def slots(self, start: int, stop: int) -> "DecodeState":
        """A view on slots ``[start, stop)`` sharing storage (used to extend one session)."""
        return DecodeState(
            kv=self.kv.slots(start, stop),
            mtp_kv=None if self.mtp_kv is None else self.mtp_kv.slots(start, stop),
            tokens=self.tokens[start:stop], lengths=self.lengths[start:stop],
            hidden=self.hidden[start:stop],
            draft_probs=None if self.draft_probs is None else self.draft_probs[start:stop],
        )
