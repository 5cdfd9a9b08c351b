"""Four realtime sessions on the tiny unified preset at once: their answers are slots of the stack's one stepping
loop (issue 17 acceptance 3) — one thread, steps that carry several sessions, every answer complete."""

from __future__ import annotations

import asyncio

from realtime.unified_turn import LocalModels, run_turn
from tests.pipeline.conftest import clip


def test_four_concurrent_sessions_share_one_stepping_loop(stack):
    loop = stack.loop()
    steps0, slot_steps0 = loop.steps, loop.slot_steps

    async def four():
        models = LocalModels(stack)
        return await asyncio.gather(*(run_turn(models, clip(), session_id=f"sess_{i}") for i in range(4)))

    results = asyncio.run(four())
    assert stack.loop() is loop
    for r in results:
        assert r.done["response"]["status"] == "completed", r.done
        assert r.stats.audio_tokens == stack.options.max_audio_tokens
        assert len(r.audio) > 0
    steps, slot_steps = loop.steps - steps0, loop.slot_steps - slot_steps0
    assert len(loop.thread_ids) == 1          # one stepping thread for every session
    assert loop.max_live >= 2                 # answers were live together in one engine
    assert slot_steps > steps                 # so some steps advanced several sessions at once
    print(f"\n4 sessions: {steps} loop steps for {slot_steps} slot-steps "
          f"({slot_steps / steps:.2f} sessions per step, max live {loop.max_live})")
