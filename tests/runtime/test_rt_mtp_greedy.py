"""MTP greedy decoding is token-identical to plain greedy decoding, whatever the drafts are.

Three kinds of drafts: random MTP heads (almost always rejected), an oracle that proposes the right
continuation with random corruptions (forces every acceptance length 0..K), and MTP heads trained
briefly by ``train_mtp`` (self-distillation). Models are float64 so the 1-token and K+1-token
forwards cannot disagree on an argmax through rounding.
"""
from __future__ import annotations

import pytest
import torch
from rt_helpers import OracleDrafter, full_forward_greedy, prompts, tiny

from runtime.drafter import MTPDrafter
from runtime.engine import DecodeEngine
from runtime.generate import generate
from runtime.train_mtp import TrainMTPConfig, train_mtp

N_PROMPTS, NEW = 60, 24


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def cases(model):
    ps = prompts(model.config.vocab_size, N_PROMPTS, 1, 13, seed=1)
    plain = generate(DecodeEngine(model, batch=N_PROMPTS, capacity=64, n_draft=0), ps, max_new_tokens=NEW)
    assert plain.tokens_per_step == 1.0
    return ps, plain.tokens


def test_plain_matches_uncached_reference(model, cases):
    ps, plain = cases
    for p, out in list(zip(ps, plain))[:8]:
        assert out == full_forward_greedy(model, p, NEW)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_random_heads_identical(model, cases, k):
    ps, plain = cases
    out = generate(DecodeEngine(model, batch=N_PROMPTS, capacity=64, n_draft=k), ps, max_new_tokens=NEW)
    assert out.tokens == plain


@pytest.mark.parametrize("k", [1, 2, 3])
def test_oracle_drafts_identical_and_cover_every_acceptance_length(model, cases, k):
    ps, plain = cases
    ref = {b: p + o + [0] * 8 for b, (p, o) in enumerate(zip(ps, plain))}
    drafter = OracleDrafter(ref, p_bad=0.25, vocab=model.config.vocab_size, seed=k)
    out = generate(DecodeEngine(model, batch=N_PROMPTS, capacity=64, n_draft=k, drafter=drafter),
                   ps, max_new_tokens=NEW)
    assert out.tokens == plain
    # Every outcome from "all drafts rejected" (1 token) to "all accepted" (k+1) happened.
    assert set(out.per_step) == set(range(1, k + 2))
    assert out.tokens_per_step > 1.5


class _RecordingOracle(MTPDrafter):
    """Runs the real MTP chain (so its caches are exercised) but feeds oracle drafts forward, and
    records, per (slot, pending position, depth), what MTP predicted and the drafts fed so far."""

    def __init__(self, ref, p_bad, vocab):
        self.oracle = OracleDrafter(ref, p_bad, vocab, seed=99)
        self.records = []       # (slot, n, depth, MTP argmax, drafts fed to depths < depth)
        self._fed = {}

    def choose(self, depth, logits, sampler, win, generator):
        draft = self.oracle.drafts(depth, win)
        active = [True] * len(win.slots) if win.active is None else win.active.tolist()
        for row, (slot, n) in enumerate(zip(win.slots, win.pending.tolist())):
            if not active[row]:
                continue   # paused slots keep their old drafts; nothing new to check
            fed = self._fed.setdefault((slot, n), [])
            self.records.append((slot, n, depth, int(logits[row].argmax()), list(fed)))
            fed.append(int(draft[row]))
        return draft, None


def test_mtp_cache_matches_offline_mtp(model, cases):
    """MTP drafts computed with the window/rollback caches equal an uncached MTP forward over the
    same tokens (committed prefix + the drafts actually fed forward) — for every step and depth."""
    ps, plain = cases[0][:6], cases[1][:6]
    ref = {b: p + o for b, (p, o) in enumerate(zip(ps, plain))}
    drafter = _RecordingOracle(ref, p_bad=0.3, vocab=model.config.vocab_size)
    out = generate(DecodeEngine(model, batch=6, capacity=64, n_draft=3, drafter=drafter), ps,
                   max_new_tokens=NEW)
    assert out.tokens == plain
    assert len(set(out.per_step)) == 4   # acceptance lengths 0..3 all occurred
    checked = 0
    with torch.no_grad():
        for slot, n, depth, predicted, fed in drafter.records:
            if n >= len(ref[slot]):
                continue   # past max_new_tokens: committed tokens the reference does not have
            toks = torch.tensor([ref[slot][:n + 1] + fed])    # tokens 0..n, then drafts d_1..d_depth
            g = model.mtp_offline(model(toks[:, :n]), toks, depth + 1)[depth]
            assert g.shape[1] == n
            offline = int(model.mtp_logits(depth, g[0, n - 1]).argmax())
            assert offline == predicted, (slot, n, depth)
            checked += 1
    assert checked > 100


@pytest.fixture(scope="module")
def trained(model):
    m = tiny()
    cfg = TrainMTPConfig(steps=120, max_seconds=40, n_sequences=48, seq_len=40, prompt_len=(2, 10),
                         batch_size=8, lr=3e-3, bf16=False, log_every=1000)
    m.float()   # train in float32, decode in float64
    summary = train_mtp(m, cfg, log=lambda s: None)
    return m.double(), summary


@pytest.mark.parametrize("k", [1, 2, 3])
def test_trained_heads_identical_and_accept_more(model, trained, cases, k):
    m, _ = trained
    ps, plain = cases
    rand = generate(DecodeEngine(model, batch=N_PROMPTS, capacity=64, n_draft=k), ps, max_new_tokens=NEW)
    out = generate(DecodeEngine(m, batch=N_PROMPTS, capacity=64, n_draft=k), ps, max_new_tokens=NEW)
    assert out.tokens == plain
    assert out.tokens_per_step > rand.tokens_per_step + 0.2
