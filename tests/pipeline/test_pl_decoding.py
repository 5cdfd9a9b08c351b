"""The audio-only decoding constraint of the unified LLM: answers are whole 120 ms groups with every id in
its codebook's place, and the constraint keeps MTP decoding exact (greedy MTP == plain greedy)."""

from __future__ import annotations

import torch

from runtime.audio_decoding import AudioChatFormat, AudioOnlyDrafter, AudioOnlyLM, AudioPhaseConstraint
from runtime.engine import DecodeEngine
from runtime.generate import generate
from runtime.presets import build_tiny
from runtime.sampling import SamplingParams
from tests.runtime.rt_helpers import OracleDrafter
from voxcore.interleave import AudioTokenLayout, interleave, split

FMT = AudioChatFormat()


def engine(model, n_draft: int, drafter=None) -> DecodeEngine:
    c = AudioPhaseConstraint(model, FMT)
    return DecodeEngine(AudioOnlyLM(model, c), capacity=256, n_draft=n_draft,
                        drafter=drafter or AudioOnlyDrafter(c), seed=5)


def prompt(model, groups: int, seed: int) -> list[int]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    ling = torch.randint(0, cfg.linguistic_size, (2 * groups,), generator=g)
    sem = torch.randint(0, cfg.semantic_size, (3 * groups,), generator=g)
    ids = interleave(ling, sem, AudioTokenLayout(cfg.audio_offset, cfg.linguistic_size, cfg.semantic_size))
    return [FMT.user, *ids.tolist(), FMT.end, FMT.assistant]


def run(eng: DecodeEngine, p: list[int], params=SamplingParams(), n: int = 60):
    eng.model.constraint.start.fill_(len(p))
    return generate(eng, [p], params, max_new_tokens=n, stop_ids=(FMT.end,))


def test_mask_allows_each_codebook_in_its_place_and_end_on_group_boundaries():
    model = build_tiny()
    cfg = model.config
    c = AudioPhaseConstraint(model, FMT)
    c.start.fill_(10)
    pos = torch.arange(10, 22)[None]  # answer positions 0..11
    ok = c.mask(torch.zeros(1, 12, cfg.vocab_size), pos)[0].isfinite()  # [12, V]
    ling = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    ling[cfg.audio_offset:cfg.semantic_offset] = True
    sem = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    sem[cfg.semantic_offset:cfg.audio_end] = True
    for rel in range(12):
        want = (ling if rel % 5 < 2 else sem).clone()
        want[FMT.end] = rel % 5 == 0 and rel > 0
        assert torch.equal(ok[rel], want), rel


def test_answers_split_into_whole_groups_greedy_and_sampled():
    model = build_tiny()
    cfg = model.config
    layout = AudioTokenLayout(cfg.audio_offset, cfg.linguistic_size, cfg.semantic_size)
    for k, params in ((0, SamplingParams()), (3, SamplingParams()), (3, SamplingParams(temperature=1.0)),
                      (2, SamplingParams(temperature=0.7, top_k=50))):
        res = run(engine(model, k), prompt(model, 6, seed=k), params, n=60)
        ids = [t for t in res.tokens[0] if t != FMT.end]
        assert len(ids) % 5 == 0 and len(ids) > 0
        ling, sem = split(torch.tensor(ids), layout)  # raises on any misplaced id
        assert ling.numel() == 2 * len(ids) // 5 and sem.numel() == 3 * len(ids) // 5


def test_end_stops_the_answer_only_after_whole_groups():
    model = build_tiny()
    # Make `end` the backbone's favourite everywhere: the constraint must still hold it back to a boundary.
    head = torch.nn.Linear(model.config.d_model, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[FMT.end] = 1e4
    model.lm_head = head
    res = run(engine(model, 3), prompt(model, 4, seed=1), n=60)
    assert res.finish == ["stop"] and res.tokens[0][-1] == FMT.end
    assert len(res.tokens[0]) - 1 == 5  # one whole group, then end at the first place it is allowed


def test_greedy_mtp_is_token_identical_to_plain_under_the_constraint():
    """float64, so 1-token and (k+1)-token forwards never round an argmax tie differently."""
    model = build_tiny().to(torch.float64)
    prompts = [prompt(model, g, seed=g) for g in (1, 3, 7)]
    plain = [run(engine(model, 0), p, n=80).tokens[0] for p in prompts]
    for k in (1, 3):
        assert [run(engine(model, k), p, n=80).tokens[0] for p in prompts] == plain
    # Random MTP heads are never right, so also force every acceptance length with an oracle drafter
    # that proposes the plain answer, corrupted 30% of the time.
    for k in (1, 2, 3):
        for i, p in enumerate(prompts):
            oracle = OracleDrafter({0: p + plain[i] + [0] * 8}, p_bad=0.3, vocab=model.config.vocab_size, seed=i)
            res = run(engine(model, k, drafter=oracle), p, n=80)
            assert res.tokens[0] == plain[i]
            assert max(res.per_step) > 1  # drafts were accepted: the masked multi-token verify ran
