"""End to end through the realtime session code: real speech → dual-codebook tokens → tiny audio LLM (MTP) →
tokens → vocoder → response audio deltas. The transport is a list (`Collector`); the models are the real
tiny ones (random weights: the checks are exact mechanics, never speech quality)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import torch

from realtime.audio import PCM16, InputDecoder
from realtime.unified_pipeline import UnifiedStack
from realtime.unified_turn import LocalModels, append, pcm16_wire, run_turn
from tests.pipeline.conftest import clip, make_runner, types

HOP_24K = 1920 * 24000 // 16000  # one 120 ms group of 5 ids = 1920 vocoder samples = 2880 wire samples


def committed_audio(wire: bytes) -> np.ndarray:
    """What the session holds after these appends (its streaming 24 → 16 kHz input decoder, 40 ms chunks)."""
    dec, step = InputDecoder(PCM16), 24000 * 2 * 40 // 1000
    return np.concatenate([dec(wire[i:i + step]) for i in range(0, len(wire), step)])


def test_spoken_turn_gets_audio_whose_length_is_the_token_count_times_the_hop(stack):
    result = asyncio.run(run_turn(LocalModels(stack), clip()))
    order = types(result.events)
    done = result.done["response"]
    assert done["status"] == "completed", done
    tokens = done["usage"]["output_tokens"]
    assert tokens == result.stats.audio_tokens == stack.options.max_audio_tokens  # a random model never says end
    assert tokens % 5 == 0
    assert result.stats.audio_samples == tokens // 5 * stack.samples_per_group  # vocoder: 1920 per group
    assert len(result.audio) == tokens // 5 * HOP_24K * 2  # on the wire: pcm16 at 24 kHz, nothing lost
    assert sum(order[i] == "response.output_audio.delta" for i in range(len(order))) > 1  # streamed in pieces
    assert order.index("input_audio_buffer.committed") \
        < order.index("conversation.item.input_audio_transcription.completed") \
        < order.index("response.output_audio.delta") < order.index("response.output_audio.done") \
        < order.index("response.done")
    transcript = next(e for e in result.events if e["type"].endswith("transcription.completed"))["transcript"]
    assert transcript.startswith("[unified pipeline:") and "no text transcript" in transcript
    item = done["output"][0]
    assert item["content"][0]["type"] == "output_audio" and item["status"] == "completed"
    print(f"\n{tokens} answer tokens -> {result.audio_s:.2f} s; first audio {1000 * result.first_audio_s:.0f} ms "
          f"after commit; RTF {result.stats.rtf:.3f}; MTP k={result.stats.n_draft} "
          f"{result.stats.tokens_per_step:.2f} tokens/step")


def test_manual_turn_is_encoded_while_appended_and_equals_offline(stack):
    async def scenario():
        runner, client = make_runner(LocalModels(stack))
        await runner.start()
        wire = pcm16_wire(clip())
        await append(runner, wire)
        await runner.handle_text(json.dumps({"type": "input_audio_buffer.commit"}))
        await client.wait_for("conversation.item.input_audio_transcription.completed")
        await runner.close()
        return runner, client, wire

    runner, client, wire = asyncio.run(scenario())
    item_id = next(e for e in client.events if e["type"] == "input_audio_buffer.committed")["item_id"]
    assert runner.backend.unified.incremental_turns == 1 and runner.backend.unified.offline_turns == 0
    assert runner.backend.unified.turns[item_id] == stack.encode(committed_audio(wire))  # streamed == offline


def test_server_vad_turn_then_barge_in_cancels_and_the_next_turn_answers(stack):
    """Silero VAD ends the turn; its ids were encoded while it was spoken (== offline). Speaking again
    while the answer plays cancels it (turn_detected) — output stops, generation stops — and the new turn
    gets its own answer."""
    speech = clip("commands/goforward.wav")
    pause = np.zeros(16000, np.float32)
    turn = pcm16_wire(np.concatenate([pause[:8000], speech, pause]))
    captured = []

    async def scenario():
        runner, client = make_runner(LocalModels(stack), vad=True, lead_ms=200)
        original = runner.backend.unified.transcribe
        runner.backend.unified.transcribe = lambda cmd, session: captured.append(cmd) or original(cmd, session)
        await runner.start()
        await append(runner, turn)
        await client.wait_for("response.output_audio.delta")
        mark = len(client.events)
        await append(runner, turn)  # the user talks over the answer
        first_done = await client.wait_for("response.done")
        second_done = await client.wait_for("response.done", after=client.events.index(first_done) + 1)
        while runner.responses:
            await asyncio.sleep(0.01)
        await runner.close()
        return runner, client, mark, first_done, second_done

    runner, client, mark, first_done, second_done = asyncio.run(scenario())
    order = types(client.events)
    assert order.index("input_audio_buffer.speech_started") < order.index("input_audio_buffer.speech_stopped") \
        < order.index("input_audio_buffer.committed") < order.index("response.created")
    assert first_done["response"]["status"] == "cancelled"
    assert first_done["response"]["status_details"]["reason"] == "turn_detected"
    first_id = first_done["response"]["id"]
    cut = client.events.index(first_done)
    assert not [e for e in client.events[cut:] if e.get("response_id") == first_id and e["type"].endswith("delta")]
    stats = runner.backend.unified.stats[first_id]
    assert stats.finish == "cancelled" and stats.audio_tokens < stack.options.max_audio_tokens
    assert second_done["response"]["status"] == "completed"
    assert runner.backend.unified.incremental_turns == 2 and runner.backend.unified.offline_turns == 0
    for cmd in captured:
        assert runner.backend.unified.turns[cmd.item_id] == stack.encode(cmd.audio)
    assert not runner.tasks


def test_same_input_same_audio_with_fixed_seeds(stack):
    audio = clip("commands/001.wav")
    for temperature in (0.0, 0.8):
        a = asyncio.run(run_turn(LocalModels(stack), audio, temperature=temperature))
        b = asyncio.run(run_turn(LocalModels(stack), audio, temperature=temperature))
        assert a.audio == b.audio and len(a.audio) > 0
    other = asyncio.run(run_turn(LocalModels(stack.with_options(seed=1)), audio, temperature=0.8))
    assert other.audio != a.audio  # the seed really drives sampling and the vocoder noise


def test_mtp_on_and_off_give_identical_greedy_tokens_and_audio():
    """float64 LLM: greedy MTP must equal plain decoding token for token, so no argmax may be a rounding tie."""
    stack = UnifiedStack.tiny(lm_dtype=torch.float64)
    audio = clip()
    runs = {}
    for k in (0, 3):
        models = LocalModels(stack.with_options(n_draft=k))
        result = asyncio.run(run_turn(models, audio))
        runs[k] = result
        print(f"\nk={k}: {result.stats.tokens_per_step:.2f} tokens/step, {result.stats.steps} steps, "
              f"LLM {result.stats.llm_s:.2f} s")
    assert runs[0].audio == runs[3].audio and len(runs[0].audio) > 0
    assert runs[0].stats.audio_tokens == runs[3].stats.audio_tokens
    assert runs[0].stats.tokens_per_step == 1.0


def test_cancel_mid_response_stops_output_and_generation(stack):
    async def scenario():
        runner, client = make_runner(LocalModels(stack), lead_ms=100)
        await runner.start()
        await append(runner, pcm16_wire(clip("commands/001.wav")))
        await runner.handle_text(json.dumps({"type": "input_audio_buffer.commit"}))
        await runner.handle_text(json.dumps({"type": "response.create"}))
        await client.wait_for("response.output_audio.delta")
        await runner.handle_text(json.dumps({"type": "response.cancel"}))
        done = await client.wait_for("response.done")
        while runner.responses:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        await runner.close()
        return runner, client, done

    runner, client, done = asyncio.run(scenario())
    assert done["response"]["status"] == "cancelled"
    cut = client.events.index(done)
    assert not [e for e in client.events[cut:] if e["type"] == "response.output_audio.delta"]
    stats = runner.backend.unified.stats[done["response"]["id"]]
    # Back-pressure holds decoding ~1.1 s of audio ahead of what was sent, so it was still running.
    assert stats.finish == "cancelled" and stats.audio_tokens < stack.options.max_audio_tokens
    sent = len(client.audio())
    assert 0 < sent < stats.audio_samples * 3  # part of what was decoded went out (24 kHz pcm16 = 3 B/sample)
    item = done["response"]["output"][0]
    assert item["status"] == "incomplete"


def test_second_turn_prompt_holds_the_first_turn_and_only_the_heard_answer(stack):
    """Token arithmetic of the context: [user u1 end] [assistant a1 end] [user u2 end] assistant."""
    async def scenario():
        runner, client = make_runner(LocalModels(stack))
        await runner.start()
        done = []
        for rel in ("commands/001.wav", "commands/002.wav"):
            mark = len(client.events)
            await append(runner, pcm16_wire(clip(rel)))
            await runner.handle_text(json.dumps({"type": "input_audio_buffer.commit"}))
            await runner.handle_text(json.dumps({"type": "response.create"}))
            done.append(await client.wait_for("response.done", after=mark))
        # the listener stopped the first answer after 5 groups: only those stay in the context
        first_item = done[0]["response"]["output"][0]["id"]
        await runner.handle_text(json.dumps({"type": "conversation.item.truncate", "item_id": first_item,
                                             "content_index": 0, "audio_end_ms": 5 * 120 + 60}))
        await runner.handle_text(json.dumps({"type": "response.create"}))
        done.append(await client.wait_for("response.done", after=client.events.index(done[1]) + 1))
        await runner.close()
        return runner, client, done

    runner, client, done = asyncio.run(scenario())
    u1, u2 = (runner.backend.unified.turns[e["item_id"]] for e in client.events if e["type"] == "input_audio_buffer.committed")
    a1 = done[0]["response"]["usage"]["output_tokens"]
    a2 = done[1]["response"]["usage"]["output_tokens"]
    assert done[0]["response"]["usage"]["input_tokens"] == len(u1) + 2 + 1
    assert done[1]["response"]["usage"]["input_tokens"] == (len(u1) + 2) + (a1 + 2) + (len(u2) + 2) + 1
    assert done[2]["response"]["usage"]["input_tokens"] == (len(u1) + 2) + (25 + 2) + (len(u2) + 2) + (a2 + 2) + 1


def test_models_that_fail_to_load_fail_the_turn_and_the_response_not_the_session():
    class Broken(LocalModels):
        def unified(self):
            raise RuntimeError("no weights here")

    async def scenario():
        runner, client = make_runner(Broken(None))
        await runner.start()
        await append(runner, pcm16_wire(clip("commands/001.wav")))
        await runner.handle_text(json.dumps({"type": "input_audio_buffer.commit"}))
        await runner.handle_text(json.dumps({"type": "response.create"}))
        done = await client.wait_for("response.done")
        await runner.handle_text(json.dumps({"type": "conversation.item.retrieve", "item_id": "item_missing"}))
        await client.wait_for("error")
        await runner.close()
        return client, done

    client, done = asyncio.run(scenario())
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["code"] == "models_unavailable"
    failed = next(e for e in client.events if e["type"] == "conversation.item.input_audio_transcription.failed")
    assert "no weights here" in failed["error"]["message"]
