"""The process-wide stepping loop (`runtime.slot_loop`): answers of many sessions are slots of one engine, decoded
by one thread in shared batched steps, each exactly as it would be decoded alone."""

from __future__ import annotations

import threading

import torch

from runtime.audio_decoding import AudioChatFormat, AudioOnlyDrafter, AudioOnlyLM, AudioPhaseConstraint
from runtime.engine import DecodeEngine
from runtime.generate import generate
from runtime.presets import build_tiny
from runtime.slot_loop import Generation, SlotLoop
from voxcore.interleave import AudioTokenLayout, interleave

FMT = AudioChatFormat()
MODEL = build_tiny().double()  # float64: batched and alone agree to the last bit that argmax can see


def constrained(batch: int, n_draft: int) -> tuple[DecodeEngine, AudioPhaseConstraint]:
    c = AudioPhaseConstraint(MODEL, FMT, batch=batch)
    eng = DecodeEngine(AudioOnlyLM(MODEL, c), batch=batch, capacity=256, n_draft=n_draft,
                       drafter=AudioOnlyDrafter(c))
    return eng, c


def prompt(groups: int, seed: int) -> list[int]:
    cfg = MODEL.config
    g = torch.Generator().manual_seed(seed)
    ling = torch.randint(0, cfg.linguistic_size, (2 * groups,), generator=g)
    sem = torch.randint(0, cfg.semantic_size, (3 * groups,), generator=g)
    ids = interleave(ling, sem, AudioTokenLayout(cfg.audio_offset, cfg.linguistic_size, cfg.semantic_size))
    return [FMT.user, *ids.tolist(), FMT.end, FMT.assistant]


def alone(p: list[int], n: int, n_draft: int) -> list[int]:
    eng, c = constrained(1, n_draft)
    c.start.fill_(len(p))
    return generate(eng, [p], max_new_tokens=n, stop_ids=(FMT.end,)).tokens[0]


class Sink:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.reason = ""
        self.done = threading.Event()

    def tokens(self, ids: list[int]) -> None:
        self.ids += ids

    def finish(self, reason: str) -> None:
        self.reason = reason
        self.done.set()


def submit(loop: SlotLoop, p: list[int], n: int, **kw) -> tuple[Generation, Sink]:
    sink = Sink()
    gen = loop.submit(Generation(p, sink.tokens, sink.finish, max_new=n, stop_ids=frozenset({FMT.end}), **kw))
    return gen, sink


def test_concurrent_answers_share_one_thread_and_equal_their_solo_decodes():
    for n_draft in (0, 3):
        loop = SlotLoop(*constrained(4, n_draft))
        prompts = [prompt(g, seed=g) for g in (1, 2, 3, 5)]
        hold = threading.Event()  # all four are queued before the loop admits any
        gate = [Generation([FMT.user], lambda ids: hold.wait(), lambda r: None, max_new=1)]
        loop.submit(gate[0])
        runs = [submit(loop, p, 40) for p in prompts]
        hold.set()
        for _, sink in runs:
            assert sink.done.wait(60)
        for p, (gen, sink) in zip(prompts, runs):
            assert sink.ids == alone(p, 40, n_draft), n_draft
            assert sink.reason == "length" and gen.produced == 40
        assert len(loop.thread_ids) == 1
        assert loop.max_live == 4
        assert loop.steps < loop.slot_steps  # steps carried several slots at once
        loop.close()


def test_more_answers_than_slots_wait_for_a_free_slot():
    loop = SlotLoop(*constrained(2, 0))
    runs = [submit(loop, prompt(1, seed=s), 10) for s in range(5)]
    for _, sink in runs:
        assert sink.done.wait(60) and sink.reason == "length" and len(sink.ids) == 10
    assert loop.max_live == 2
    loop.close()


def test_cancel_and_back_pressure_are_per_slot():
    loop = SlotLoop(*constrained(2, 0))
    allowed = threading.Event()
    paused, psink = submit(loop, prompt(2, seed=7), 30, may_run=allowed.is_set)
    free, fsink = submit(loop, prompt(2, seed=8), 30)
    assert fsink.done.wait(60) and fsink.reason == "length"
    assert len(psink.ids) == 1  # only its prefill's id: it sat out every step
    allowed.set()
    loop.wake()
    assert psink.done.wait(60) and psink.ids == alone(prompt(2, seed=7), 30, 0)

    endless, esink = submit(loop, prompt(1, seed=9), 200, may_run=lambda: len(esink.ids) < 12)
    while len(esink.ids) < 12:
        threading.Event().wait(0.01)
    endless.cancel()
    loop.wake()
    assert esink.done.wait(60) and esink.reason == "cancelled" and len(esink.ids) < 200
    again, asink = submit(loop, prompt(2, seed=7), 30)  # the slot is free and clean again
    assert asink.done.wait(60) and asink.ids == alone(prompt(2, seed=7), 30, 0)
    loop.close()


def test_a_failing_consumer_ends_only_its_own_answer():
    loop = SlotLoop(*constrained(2, 0))

    def boom(ids):
        raise RuntimeError("consumer broke")

    bad = Sink()
    loop.submit(Generation(prompt(1, seed=1), boom, bad.finish, max_new=20))
    good_gen, good = submit(loop, prompt(1, seed=2), 20)
    assert bad.done.wait(60) and bad.reason == "error"
    assert good.done.wait(60) and good.reason == "length" and good.ids == alone(prompt(1, seed=2), 20, 0)
    loop.close()
