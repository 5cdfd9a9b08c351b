"""Shared helpers for the runtime tests: tiny models, prompts and reference decoders."""
from __future__ import annotations

import torch

from runtime.drafter import write_draft
from runtime.model import AudioLM, build_model
from runtime.presets import tiny_config

# A joint vocabulary small enough that the tests stay fast (32 text + 16 + 16 audio ids).
SMALL = dict(text_vocab_size=32, audio_offset=32, linguistic_size=16, semantic_size=16)


def tiny(dtype: torch.dtype = torch.float64, seed: int = 7, init_std: float = 0.02, **overrides) -> AudioLM:
    """A tiny random model. float64 by default so that exact-token comparisons between code paths
    whose sums are ordered differently (1-token vs k+1-token forwards) never hit a rounding tie."""
    cfg = tiny_config(**{**SMALL, **overrides})
    return build_model(cfg, seed=seed, init_std=init_std, dtype=dtype)


def prompts(vocab: int, n: int, lo: int = 1, hi: int = 13, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens]


@torch.no_grad()
def full_forward_greedy(model: AudioLM, prompt: list[int], n: int) -> list[int]:
    """Reference greedy decoding with no cache at all: a full forward over the sequence per token."""
    seq, out = list(prompt), []
    for _ in range(n):
        t = int(model.logits(model(torch.tensor([seq])))[0, -1].argmax())
        out.append(t)
        seq.append(t)
    return out


class OracleDrafter:
    """Test drafter: proposes a known continuation, corrupting each draft with probability ``p_bad``.

    With the plain-greedy continuation as ``reference`` this forces every acceptance length
    (0..K) to occur, which random MTP heads (almost never right) would not.
    """

    def __init__(self, reference: dict[int, list[int]], p_bad: float, vocab: int, seed: int = 0) -> None:
        self.reference, self.p_bad, self.vocab = reference, p_bad, vocab
        self.g = torch.Generator().manual_seed(seed)

    def drafts(self, depth: int, win) -> torch.Tensor:
        """Draft [B] for 0-based ``depth``: the reference token, or a wrong one with prob p_bad."""
        draft = torch.zeros(len(win.slots), dtype=torch.long)
        for row, (slot, n) in enumerate(zip(win.slots, win.pending.tolist())):
            ref = self.reference.get(slot, [])
            i = n + depth + 1
            good = ref[i] if i < len(ref) else 0
            bad = torch.rand((), generator=self.g).item() < self.p_bad
            draft[row] = (good + 1 + int(torch.randint(0, self.vocab - 1, (), generator=self.g))) % self.vocab \
                if bad else good
        return draft

    def __call__(self, model, st, sampler, win, generator) -> None:
        for depth in range(st.n_draft):
            write_draft(st, depth, self.drafts(depth, win), None, win.pending, win.active)
