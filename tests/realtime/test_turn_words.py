"""semantic_vad with the words judged: the chat model's P(end) of the turn so far moves the end of turn.

The detector half is scripted (a fixed Smart Turn answer, verdicts delivered by hand, tone "speech" through an
energy VAD); the model half is the packaged chat model on llama.cpp, on questions whose scores sit far from
every tier's edge (`runtime.llm.turn_end`'s docstring has the figures).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from realtime.config import SEMANTIC_EAGERNESS, TurnDetection
from realtime.turns import SpeechPaused, SpeechStopped, TurnDetector
from runtime.chat_api import ChatMessage
from runtime.llm.turn_end import end_mass, open_turn
from tests.realtime.fakes import EnergyVAD, silence, tone
from tests.realtime.test_semantic_turn import FixedTurnModel, InlineExecutor, question_with_pause, stops

RATE = 16000


def judged(eagerness: str = "auto", audio_p: float = 0.0) -> TurnDetector:
    td = TurnDetection(type="semantic_vad", eagerness=eagerness)
    return TurnDetector(EnergyVAD(), td, 0, turn_model=FixedTurnModel(audio_p), executor=InlineExecutor(),
                        judge_text=True)


def run_with_verdicts(d: TurnDetector, audio: np.ndarray, p_end, chunk: int = 320) -> list:
    """Feed `audio`; answer each pause with `p_end(pause_number)` at the next append, as the runner does."""
    events, pauses = [], 0
    for i in range(0, len(audio), chunk):
        new = d.push(audio[i:i + chunk])
        events += new
        for e in new:
            if isinstance(e, SpeechPaused):
                d.text_verdict(e.end, p_end(pauses))
                pauses += 1
    return events


def one_question() -> np.ndarray:
    """Tone "speech" 0.2–1.2 s, then 2.5 s of silence."""
    return (np.concatenate([silence(0.2, RATE), tone(1.0, RATE), silence(2.5, RATE)]) / 32768).astype(np.float32)


def test_unfinished_words_hold_the_turn_through_a_pause_the_audio_calls_complete():
    clip = question_with_pause(0.7)  # 700 ms: longer than the 500 ms a finished turn waits
    events = run_with_verdicts(judged(audio_p=0.99), clip, lambda n: 0.0001 if n == 0 else 0.9)
    assert len(stops(events)) == 1 and stops(events)[0] > 2.5  # one turn, ended after the second half


def test_finished_words_and_a_complete_sound_end_the_turn_at_the_pause():
    events = run_with_verdicts(judged(audio_p=0.99), one_question(), lambda n: 0.9)
    assert stops(events) and stops(events)[0] < 1.3  # the pause's end, long before any silence rule


def test_the_surer_the_words_the_shorter_the_wait():
    ends = {}  # when the detector said the turn was over (the append that decided it)
    for p in (0.9, 0.05, 0.001):
        d = judged(audio_p=0.0)
        clip, decided_at = one_question(), None
        for i in range(0, len(clip), 320):
            new = d.push(clip[i:i + 320])
            for e in new:
                if isinstance(e, SpeechPaused):
                    d.text_verdict(e.end, p)
                if isinstance(e, SpeechStopped):
                    decided_at = decided_at or (i + 320) / RATE
        ends[p] = decided_at
    # Smart Turn says "incomplete" throughout: only the words' tier sets the silence (500 / 750 / 1000 ms).
    assert ends[0.9] < ends[0.05] < ends[0.001]
    assert ends[0.001] - ends[0.9] >= 0.4


def test_no_verdict_leaves_the_decision_to_the_audio():
    events = run_with_verdicts(judged(audio_p=0.99), one_question(), lambda n: None)
    assert stops(events)[0] < 1.3  # as semantic_vad without the words: Smart Turn ends it at the pause


def test_a_verdict_for_an_earlier_pause_is_ignored():
    d = judged(audio_p=0.0)
    clip = question_with_pause(0.45)
    events, first_pause = [], None
    for i in range(0, len(clip), 320):
        new = d.push(clip[i:i + 320])
        events += new
        for e in new:
            if isinstance(e, SpeechPaused) and first_pause is None:
                first_pause = e.end
        if i / RATE > 2.0 and first_pause is not None:
            d.text_verdict(first_pause, 0.99)  # arrives after speech resumed: about the half question
    assert stops(events)[0] > 2.5  # the late "finished" did not cut the turn at the first pause


def test_tiers_are_ordered_for_every_eagerness():
    for name, rule in SEMANTIC_EAGERNESS.items():
        lows = [lo for lo, _ in rule.text_tiers]
        waits = [ms for _, ms in rule.text_tiers] + [rule.max_silence_ms]
        assert lows == sorted(lows, reverse=True), name
        assert waits == sorted(waits), name
        assert rule.text_silence_ms(1.0) == (rule.text_tiers[0][1], True)
        assert rule.text_silence_ms(0.0) == (rule.max_silence_ms, False)


# ---- the words' score ---------------------------------------------------------------------------------------
def test_open_turn_takes_the_punctuation_off_the_words_so_far():
    turn = open_turn([ChatMessage("system", "s"), ChatMessage("user", "Can you tell me?  ")])
    assert turn[-1] == ChatMessage("user", "Can you tell me") and turn[0].content == "s"
    with pytest.raises(ValueError):
        open_turn([ChatMessage("assistant", "hello")])


def test_end_mass_counts_sentence_ends_and_the_end_of_turn_token():
    candidates = [("?\n", 5, np.log(0.5)), ("?", 6, np.log(0.2)), (" and", 7, np.log(0.2)), ("x", 99, np.log(0.05))]
    assert end_mass(candidates, (99,)) == pytest.approx(0.75)
    assert end_mass(candidates, ()) == pytest.approx(0.7)


@pytest.fixture(scope="module")
def llama_engine():
    from runtime.llm import get_engine
    from runtime.llm.llamacpp_engine import LlamaCppChatEngine

    engine = get_engine("qwen2.5-coder-0.5b-instruct")
    if not isinstance(engine, LlamaCppChatEngine):
        pytest.skip(f"the default chat engine here is {type(engine).__name__}, not llama.cpp")
    return engine


def test_the_chat_model_tells_unfinished_questions_from_whole_ones(llama_engine):
    from runtime.llm.turn_end import end_of_turn_probability

    system = ChatMessage("system", "You are a helpful voice assistant.")

    def p(text: str) -> float:
        return asyncio.run(end_of_turn_probability(llama_engine, [system, ChatMessage("user", text)]))

    unfinished = [p(t) for t in ("Can you tell me?", "How many legs", "What do you call")]
    whole = [p(t) for t in ("What is the capital of France?", "How many legs does a spider have?")]
    rule = SEMANTIC_EAGERNESS["auto"]
    assert max(unfinished) < rule.text_tiers[-1][0], unfinished  # below every tier: the longest wait
    assert min(whole) >= rule.text_tiers[0][0], whole  # the surest tier
