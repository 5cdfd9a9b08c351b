"""Verifiers: given the backbone's logits on ``[pending, d_1 .. d_K]`` decide how many drafts to keep
and which token follows them.

Both return ``(n_accepted [B], next_token [B])``: drafts ``d_1 .. d_a`` are kept and ``next_token``
is the backbone's own token at the first rejected position (or the bonus token after all K).
Shapes are static and nothing syncs with the host; with ``K = 0`` both reduce to plain decoding.

* :class:`GreedyVerifier` — keep the longest prefix of drafts equal to the backbone's argmax. The
  output is token-identical to plain greedy decoding whatever the drafts are.
* :class:`RejectionVerifier` — speculative sampling (Leviathan et al. 2023, Chen et al. 2023):
  accept ``d_i`` with probability ``min(1, p_i(d_i) / q_i(d_i))``; at the first rejection sample
  from ``norm(max(0, p_i - q_i))``; after K acceptances sample the bonus from ``p_{K+1}``. Each
  emitted token is then distributed exactly as under plain sampling from ``p``.

Every multi-token decoder uses these (the audio LLM's ``runtime.engine`` and the Whisper decoder's
``asr.torch_whisper.mtp``), so they sit below both; the sampler reaches them through :class:`Distributions`.
"""
from __future__ import annotations

from typing import Protocol

import torch


class Distributions(Protocol):
    """What rejection sampling needs of a sampler (``runtime.sampling.Sampler`` is one)."""

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, T, V] -> the filtered target distributions [B, T, V]."""
        ...

    def sample(self, probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """probs [..., V] -> one token per row [...], without a host sync."""
        ...


def _leading_ones(accept: torch.Tensor) -> torch.Tensor:
    """accept [B, K] bool -> length of the all-True prefix [B]."""
    return accept.long().cumprod(dim=1).sum(dim=1)


class Verifier(Protocol):
    def __call__(self, logits: torch.Tensor, drafts: torch.Tensor, draft_probs: torch.Tensor | None,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]: ...


class GreedyVerifier:
    """Longest matching prefix against the backbone's argmax."""

    def __call__(self, logits: torch.Tensor, drafts: torch.Tensor, draft_probs: torch.Tensor | None,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        # logits [B, K+1, V]; drafts [B, K]
        target = logits.argmax(-1)                                   # [B, K+1]
        n_acc = _leading_ones(drafts == target[:, :-1])              # [B]
        return n_acc, target.gather(1, n_acc[:, None])[:, 0]


class RejectionVerifier:
    """Speculative rejection sampling against the sampler's filtered distributions."""

    def __init__(self, sampler: Distributions) -> None:
        self.sampler = sampler

    def __call__(self, logits: torch.Tensor, drafts: torch.Tensor, draft_probs: torch.Tensor | None,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, k1, v = logits.shape
        k = k1 - 1
        p = self.sampler.probs(logits)                               # [B, K+1, V] target
        if k == 0:
            return torch.zeros(b, dtype=torch.long, device=logits.device), self.sampler.sample(p[:, 0], generator)
        assert draft_probs is not None, "sampling with drafts needs the draft distributions q"
        q = draft_probs.to(p.dtype)                                  # [B, K, V]
        p_d = p[:, :k].gather(2, drafts[..., None])[..., 0]          # p_i(d_i)  [B, K]
        q_d = q.gather(2, drafts[..., None])[..., 0]                 # q_i(d_i)  [B, K]
        u = torch.rand(b, k, generator=generator, device=logits.device, dtype=p.dtype)
        # u < p/q written without the division; q_d > 0 because d_i was drawn from q_i.
        n_acc = _leading_ones(u * q_d < p_d)                         # [B]
        # Residual at every position; q is zero past the last draft, so row K is p_{K+1} itself.
        q_ext = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)    # [B, K+1, V]
        idx = n_acc[:, None, None].expand(b, 1, v)
        resid = (p - q_ext).clamp_min(0).gather(1, idx)[:, 0]        # [B, V]
        mass = resid.sum(-1, keepdim=True)
        # A rejection implies p != q, so the residual has mass; the fallback only guards rounding.
        dist = torch.where(mass > 0, resid / mass.clamp_min(1e-30), p.gather(1, idx)[:, 0])
        return n_acc, self.sampler.sample(dist, generator)
