"""Speculative responses (issue 18, build item 3): at a short pause the session answers the turn so far, unsent;
the answer goes out when the turn ends at that pause, and is dropped without a trace when the user goes on.

The sessions run on an event loop with the fakes (energy VAD, canned ASR, a chat engine that answers what it is
asked, a tone TTS). The tests wait for states (a speculation has its first audio ready), never for times, and assert
no timings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import replace

import numpy as np
import pytest

from realtime.config import SessionConfig, Speculation, TurnDetection
from realtime.host import RealtimeHost
from realtime.pipeline import PipelineOptions
from realtime.protocol import AudioAppend, Dialect, SessionUpdate, json_sink
from realtime.runner import SessionRunner
from realtime.session import DropSpeculation, RealtimeSession, Speculate, SpeculateResponse, StartResponse
from realtime.unified_turn import Collector
from runtime.chat_api import ChatRequest, ToolCall
from tests.realtime.fakes import CannedASR, EnergyVAD, FakeEngine, FakeModels, Script, silence, tone

PARTIAL = "Hmm well"  # what the ASR hears of the turn at its mid pause
WHOLE = "What is the capital of France?"  # … and of the whole turn


def answer(request: ChatRequest) -> Script:
    """The fake LLM answers what it was asked (so an answer shows which transcript it was made from)."""
    asked = request.messages[-1].content
    return Script((f"You asked: {asked}", " That is all."))


# ---- a session on a loop ---------------------------------------------------------------------------------
class Run:
    def __init__(self, asr_texts: list[str], *, speculation: Speculation = Speculation(), lead_ms: int = 10_000,
                 config: SessionConfig | None = None, engine: FakeEngine | None = None):
        self.models = FakeModels(asr_model=CannedASR(asr_texts))
        self.engine = engine or FakeEngine(reply=answer)
        self.client = Collector()
        self.outcomes: list[str] = []
        self.latencies: list[float] = []
        self.host = RealtimeHost("sess_spec", self.models.vad(), config, self.models, self.engine,
                                 json_sink(self.client.send, Dialect.GA, "sess_spec"),
                                 options=PipelineOptions(lead_ms=lead_ms), speculation=speculation,
                                 on_speculation=self.outcomes.append,
                                 on_turn_latency=lambda s, _trigger: self.latencies.append(s))
        self.runner = self.host.runner

    async def send(self, pcm: np.ndarray) -> None:
        await send_pcm(self.runner, pcm)

    async def event(self, ev: dict) -> None:
        await self.runner.handle_text(json.dumps(ev))

    def prepared(self) -> bool:
        return prepared(self.runner)

    def types(self) -> list[str]:
        return [e["type"] for e in self.client.events]

    def done(self) -> list[dict]:
        return [e["response"] for e in self.client.events if e["type"] == "response.done"]


async def send_pcm(runner: SessionRunner, pcm: np.ndarray, chunk_ms: int = 40) -> None:
    """24 kHz pcm16 in 40 ms appends, as fast as the session takes them."""
    step = 24 * chunk_ms
    for i in range(0, len(pcm), step):
        await runner.handle_text(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(
            pcm[i:i + step].astype("<i2").tobytes()).decode()}))
        await asyncio.sleep(0)


def prepared(runner: SessionRunner) -> bool:
    """A speculation has started and its first answer audio is waiting (unsent)."""
    return any(t.done() and not t.cancelled() and t.exception() is None and t.result() is not None
               and t.result().audio_ready for t in runner.speculations.values())


async def until(condition, what: str, timeout: float = 30.0) -> None:
    """Wait for a state (a failure says which never came); nothing here measures time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


async def speak_with_pause(run: Run, *, wait_prepared: bool = True) -> None:
    """Speech, a pause long enough to speculate but short of the turn's end, more speech, a speculative pause,
    then the silence that ends the turn (server_vad: 500 ms)."""
    await run.send(np.concatenate([silence(0.2), tone(0.8), silence(0.35)]))
    if wait_prepared:
        await until(run.prepared, "a speculation on the first half")
    await run.send(tone(0.6))  # the user goes on: that speculation is stale
    await run.send(silence(0.3))
    if wait_prepared:
        await until(run.prepared, "a speculation on the whole turn")
    await run.send(silence(0.5))  # the turn ends at the pause the second speculation answered


def normalized(events: list[dict]) -> list[dict]:
    """Events with their generated ids replaced by their order of first appearance."""
    names: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        return names.setdefault(m.group(0), f"{m.group(1)}#{len(names)}")

    text = re.sub(r"\b(item|resp|event|call|spec)_[A-Za-z0-9]+", sub, json.dumps(events))
    return json.loads(text)


# ---- (a) a dropped speculation leaves no trace -----------------------------------------------------------
def test_dropped_speculation_leaves_no_event_no_item_and_no_prompt():
    async def scenario():
        run = Run([PARTIAL, WHOLE, "Thanks"])
        await run.host.start()
        await speak_with_pause(run)
        await run.client.wait_for("response.done")
        first_turn = len(run.client.events)
        counts = dict(run.runner.speculation_counts)
        # a second turn: its prompt is the conversation, which must not hold the dropped answer either
        await run.send(np.concatenate([silence(0.2), tone(0.5), silence(0.8)]))
        await run.client.wait_for("response.done", after=first_turn)
        await until(lambda: run.engine.open_streams == 0, "every LLM stream closed")
        await run.host.close()
        return run, counts

    run, counts = asyncio.run(scenario())
    # the first speculation really ran (LLM and TTS on the half turn), then was dropped; the second was committed
    assert run.engine.requests[0].messages[-1].content == PARTIAL
    assert run.models.tts_model.calls[0].startswith(f"You asked: {PARTIAL}")
    assert counts == {"committed": 1, "dropped": 1}
    assert run.outcomes[:2] == ["dropped", "committed"]
    wire = json.dumps(run.client.events)
    assert PARTIAL not in wire  # no event carries the dropped answer (nor its transcript)
    types = run.types()
    assert types.count("response.created") == types.count("response.done") == 2
    assert types.count("input_audio_buffer.committed") == 2 and types.count("speech_started") == 0
    responses = {e["response_id"] for e in run.client.events if "response_id" in e}
    assert responses == {e["response"]["id"] for e in run.client.events if e["type"] == "response.created"}
    first = run.done()[0]
    assert first["status"] == "completed"
    assert first["output"][0]["content"][0]["transcript"] == f"You asked: {WHOLE} That is all."  # the whole turn
    transcripts = [e["transcript"] for e in run.client.events
                   if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert transcripts == [WHOLE, "Thanks"]
    # the conversation holds two user turns and two answers, nothing of the speculation
    items = run.host.session.conversation.items
    assert [(i.role, i.text_for_model()) for i in items] == [
        ("user", WHOLE), ("assistant", f"You asked: {WHOLE} That is all."), ("user", "Thanks"),
        ("assistant", "You asked: Thanks That is all.")]
    last_prompt = run.engine.requests[-1].messages
    assert [m.role for m in last_prompt] == ["system", "user", "assistant", "user"]
    assert not any(PARTIAL in str(m.content) for m in last_prompt)
    assert len(run.latencies) == 2  # one turn latency per response sent, none for the dropped one


# ---- (b) a committed speculation is the response a plain run makes -------------------------------------
def test_committed_speculation_sends_exactly_what_a_plain_run_sends():
    async def scenario(speculation: Speculation, wait_prepared: bool) -> Run:
        run = Run([PARTIAL, WHOLE], speculation=speculation)
        await run.host.start()
        await run.event({"type": "session.update", "session": {"temperature": 0.0}})  # greedy decoding
        await speak_with_pause(run, wait_prepared=wait_prepared)
        await run.client.wait_for("response.done")
        await run.host.close()
        return run

    speculative = asyncio.run(scenario(Speculation(), True))
    plain = asyncio.run(scenario(Speculation(responses=False), False))
    assert speculative.runner.speculation_counts == {"committed": 1, "dropped": 1}
    assert plain.runner.speculation_counts == {"committed": 0, "dropped": 0}
    assert speculative.client.audio() == plain.client.audio() != b""
    assert normalized(speculative.client.events) == normalized(plain.client.events)
    # the LLM answered the same request (the committed one; the plain run never saw the half turn)
    assert speculative.engine.requests[-1] == plain.engine.requests[-1]
    assert len(plain.engine.requests) == 1


def test_a_turn_that_ends_at_its_first_pause_commits_that_speculation():
    async def scenario() -> Run:
        run = Run([WHOLE])
        await run.host.start()
        await run.send(np.concatenate([silence(0.2), tone(0.8), silence(0.3)]))
        await until(run.prepared, "a speculation")
        await run.send(silence(0.5))
        await run.client.wait_for("response.done")
        await run.host.close()
        return run

    run = asyncio.run(scenario())
    assert run.runner.speculation_counts == {"committed": 1, "dropped": 0}
    assert run.models.asr_model.calls == 1 and len(run.engine.requests) == 1  # one decode, one LLM run, reused
    types = run.types()
    order = ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "response.created",
             "conversation.item.input_audio_transcription.completed", "response.output_item.added",
             "response.output_audio.delta", "response.done"]
    assert [types.index(t) for t in order] == sorted(types.index(t) for t in order)
    assert run.done()[0]["output"][0]["content"][0]["transcript"] == f"You asked: {WHOLE} That is all."


# ---- (c) barge-in, response.cancel, response.create, tools behave as before ----------------------------
def test_barge_in_then_a_speculating_turn():
    """An answer is playing; the user talks over it (it is cancelled, turn_detected), pauses mid-sentence (a
    speculation starts), goes on, and ends: the second answer is on the whole new turn."""
    async def scenario() -> Run:
        long = Script(("This answer goes on for quite a while. ", "It has several sentences to say. ",
                       "And then some more."))
        engine = FakeEngine(long, reply=answer)
        run = Run(["Hello", PARTIAL, WHOLE], lead_ms=200, engine=engine)  # paced: the answer plays for seconds
        await run.host.start()
        await run.send(np.concatenate([silence(0.2), tone(0.5), silence(0.8)]))
        await run.client.wait_for("response.output_audio.delta")
        await speak_with_pause(run)  # starts by barging in
        await until(lambda: len(run.done()) == 2, "the second response's end")
        await run.host.close()
        return run

    run = asyncio.run(scenario())
    first, second = run.done()
    assert first["status"] == "cancelled" and first["status_details"]["reason"] == "turn_detected"
    assert second["status"] == "completed"
    assert second["output"][0]["content"][0]["transcript"] == f"You asked: {WHOLE} That is all."
    assert "dropped" in run.outcomes and run.outcomes[-1] == "committed"  # (the first turn's may be committed too)
    assert PARTIAL not in json.dumps(run.client.events)
    assert run.types().count("response.created") == 2
    assert [(i.role, i.status) for i in run.host.session.conversation.items] == [
        ("user", "completed"), ("assistant", "incomplete"), ("user", "completed"), ("assistant", "completed")]


def test_response_cancel_while_speculating_and_on_the_committed_response():
    async def scenario() -> tuple[Run, list[str]]:
        slow = Script(("You asked: something.", " Then a long tail that keeps playing", " and playing."))
        run = Run([WHOLE], lead_ms=200, engine=FakeEngine(slow))
        await run.host.start()
        await run.send(np.concatenate([silence(0.2), tone(0.8), silence(0.3)]))
        await until(run.prepared, "a speculation")
        # nothing is active while the user pauses: response.cancel is refused, as it is without speculation
        await run.event({"type": "response.cancel"})
        error = await run.client.wait_for("error")
        before = run.types()
        await run.send(silence(0.5))
        await run.client.wait_for("response.output_audio.delta")
        await run.event({"type": "response.cancel"})
        await run.client.wait_for("response.done")
        await until(lambda: run.engine.open_streams == 0, "the LLM stream closed")
        await run.host.close()
        return run, [error["error"]["code"], *before]

    run, (code, *before) = asyncio.run(scenario())
    assert code == "response_cancel_not_active"
    assert "response.created" not in before  # the speculation had sent nothing
    done = run.done()[0]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    assert run.runner.speculation_counts == {"committed": 1, "dropped": 0}
    assert run.host.session.active is None
    assert run.host.session.conversation.items[-1].status == "incomplete"


def test_truncate_of_a_committed_speculative_answer_keeps_only_what_was_heard():
    async def scenario() -> Run:
        long = Script(("One two three four five six. ", "Seven eight nine ten eleven twelve."))
        run = Run([WHOLE], lead_ms=200, engine=FakeEngine(long))
        await run.host.start()
        await run.send(np.concatenate([silence(0.2), tone(0.8), silence(0.3)]))
        await until(run.prepared, "a speculation")
        await run.send(silence(0.5))
        delta = await run.client.wait_for("response.output_audio.delta")
        await run.event({"type": "conversation.item.truncate", "item_id": delta["item_id"], "content_index": 0,
                         "audio_end_ms": 100})
        await run.client.wait_for("conversation.item.truncated")
        await run.host.close()
        return run

    run = asyncio.run(scenario())
    assert run.runner.speculation_counts["committed"] == 1
    assert run.done()[0]["status"] == "cancelled"
    answer_item = run.host.session.conversation.items[-1]
    assert answer_item.role == "assistant" and answer_item.content[0].transcript == ""  # nothing heard by 100 ms


def test_response_create_during_the_pause_drops_the_speculation():
    async def scenario() -> Run:
        run = Run([WHOLE])
        await run.host.start()
        await run.send(np.concatenate([silence(0.2), tone(0.8), silence(0.3)]))
        await until(run.prepared, "a speculation")
        await run.event({"type": "response.create", "response": {"instructions": "Say hi."}})
        await run.send(silence(0.5))
        await until(lambda: len(run.done()) == 2, "the client's response and the turn's own")
        await until(lambda: run.engine.open_streams == 0, "every LLM stream closed")
        await run.host.close()
        return run

    run = asyncio.run(scenario())
    assert run.runner.speculation_counts == {"committed": 0, "dropped": 1}
    assert [d["status"] for d in run.done()] == ["completed", "completed"]
    assert run.types().count("response.created") == 2
    # the turn's answer ran after the client's, on the whole conversation, as without speculation
    assert run.engine.requests[-1].messages[-2].role == "assistant"


def test_a_dropped_speculation_that_called_a_tool_leaves_no_call():
    def tool_answer(request: ChatRequest) -> Script:
        asked = request.messages[-1].content
        return Script(tool_calls=(ToolCall("call_x", "lookup", json.dumps({"q": asked})),))

    async def scenario() -> Run:
        run = Run([PARTIAL, WHOLE], engine=FakeEngine(reply=tool_answer))
        await run.host.start()
        tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
        await run.event({"type": "session.update", "session": {"tools": tools, "output_modalities": ["text"]}})
        await run.send(np.concatenate([silence(0.2), tone(0.8), silence(0.35)]))
        await until(lambda: len(run.engine.requests) == 1 and run.engine.open_streams == 0, "the speculative call")
        await run.send(tone(0.6))
        await run.send(silence(0.8))
        await run.client.wait_for("response.done")
        await run.host.close()
        return run

    run = asyncio.run(scenario())
    calls = [e for e in run.client.events if e["type"] == "response.function_call_arguments.done"]
    assert len(calls) == 1 and json.loads(calls[0]["arguments"]) == {"q": WHOLE}
    assert [i.type for i in run.host.session.conversation.items] == ["message", "function_call"]
    assert PARTIAL not in json.dumps(run.client.events)
    assert run.runner.speculation_counts["dropped"] == 1


def test_closing_the_session_closes_a_prepared_speculation():
    async def scenario() -> Run:
        slow = Script(("Hello there.", " More words", " and more", " and more."), delay_s=0.05)
        run = Run([WHOLE], engine=FakeEngine(slow))
        await run.host.start()
        await run.send(np.concatenate([silence(0.2), tone(0.8), silence(0.3)]))
        await until(run.prepared, "a speculation")
        await run.host.close()  # the client went away during the pause
        assert run.engine.open_streams == 0 and run.engine.closed_streams == 1  # closed by close(), not by GC
        return run

    run = asyncio.run(scenario())
    assert "response.created" not in run.types()


def test_server_settings_set_the_speculation_and_the_counter_counts_it():
    """What every transport opens (`open_host`): the server's speculation settings, and the Prometheus counter."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, Counter, Histogram

    from audio_server.routes_realtime import close_host, open_host
    from audio_server.settings import Settings

    async def scenario():
        registry = CollectorRegistry()
        metrics = SimpleNamespace(
            realtime_speculations=Counter("spec", "", ["outcome"], registry=registry),
            realtime_turn_latency=Histogram("lat", "", ["trigger"], registry=registry))
        models = FakeModels(asr_model=CannedASR([PARTIAL, WHOLE]))
        app = SimpleNamespace(state=SimpleNamespace(settings=Settings(realtime_speculative_ms=200), metrics=metrics,
                                                    hub=models, chat_engine=FakeEngine(reply=answer)))
        client = Collector()
        host = open_host(app, "sess_srv", EnergyVAD(), SessionConfig(), json_sink(client.send, Dialect.GA, "sess_srv"),
                         lambda _n: None)
        assert host.session.speculation == Speculation(pause_ms=200, responses=True)
        await host.start()
        runner = host.runner
        await send_pcm(runner, np.concatenate([silence(0.2), tone(0.8), silence(0.35)]))
        await until(lambda: prepared(runner), "a speculation on the first half")
        await send_pcm(runner, np.concatenate([tone(0.6), silence(0.3)]))
        await until(lambda: prepared(runner), "a speculation on the whole turn")
        await send_pcm(runner, silence(0.5))
        await client.wait_for("response.done")
        await close_host(app, host)
        return {outcome: registry.get_sample_value("spec_total", {"outcome": outcome})
                for outcome in ("committed", "dropped")}

    assert asyncio.run(scenario()) == {"committed": 1.0, "dropped": 1.0}
    off = Settings(realtime_speculative_responses=False)
    assert not off.realtime_speculative_responses
    with pytest.raises(ValueError):
        Settings(realtime_speculative_ms=100)


# ---- the session's decisions, without a loop ---------------------------------------------------------------
def append(session: RealtimeSession, pcm: np.ndarray) -> list:
    out = []
    for i in range(0, len(pcm), 960):
        out += session.handle(AudioAppend(None, pcm[i:i + 960].astype("<i2").tobytes()), 0.0)
    return out


def test_session_speculates_at_the_pause_and_commits_on_the_same_span():
    session = RealtimeSession("sess_d", EnergyVAD())
    cmds = append(session, np.concatenate([silence(0.2), tone(0.8), silence(0.3)]))
    spec, asr = next(c for c in cmds if isinstance(c, SpeculateResponse)), next(c for c in cmds
                                                                                 if isinstance(c, Speculate))
    assert spec.key == asr.key
    options, context, chat = session.speculation_request(spec.speculation_id, WHOLE, 900.0)
    assert chat.messages[-1].content == WHOLE and context[-1].id == session.speech_item_id
    assert session.conversation.items == []  # the speculation added nothing
    cmds = append(session, silence(0.5))
    start = next(c for c in cmds if isinstance(c, StartResponse))
    assert start.speculation == spec.speculation_id
    assert not any(isinstance(c, DropSpeculation) for c in cmds)
    session.transcription_done(session.conversation.items[0].id, WHOLE, 0.9)
    assert session.speculation_matches(start.response_id, options, chat)
    session.conversation.items[0].content[0].transcript = "something else"
    assert not session.speculation_matches(start.response_id, options, chat)


def test_session_drops_the_speculation_when_speech_resumes():
    session = RealtimeSession("sess_d", EnergyVAD())
    cmds = append(session, np.concatenate([silence(0.2), tone(0.8), silence(0.3)]))
    spec = next(c for c in cmds if isinstance(c, SpeculateResponse))
    cmds = append(session, tone(0.4))
    assert [c.speculation_id for c in cmds if isinstance(c, DropSpeculation)] == [spec.speculation_id]
    assert session.speculation_request(spec.speculation_id, PARTIAL, 900.0) is None
    cmds = append(session, silence(0.8))
    later = [c for c in cmds if isinstance(c, SpeculateResponse)]
    start = next(c for c in cmds if isinstance(c, StartResponse))
    assert len(later) == 1 and start.speculation == later[0].speculation_id  # restarted on the longer turn


@pytest.mark.parametrize("update", [{"turn_detection": {"type": "server_vad", "create_response": False}},
                                    {"turn_detection": None}])
def test_no_speculation_where_the_session_would_not_answer_by_itself(update):
    session = RealtimeSession("sess_d", EnergyVAD())
    session.handle(SessionUpdate(None, update), 0.0)
    cmds = append(session, np.concatenate([silence(0.2), tone(0.8), silence(0.8)]))
    assert not any(isinstance(c, SpeculateResponse) for c in cmds)


def test_no_speculation_while_a_response_is_in_progress_or_when_switched_off():
    session = RealtimeSession("sess_d", EnergyVAD(), config=SessionConfig(
        turn_detection=TurnDetection(interrupt_response=False)))
    append(session, np.concatenate([silence(0.2), tone(0.8), silence(0.8)]))
    assert session.active is not None
    cmds = append(session, np.concatenate([tone(0.8), silence(0.3)]))  # the user speaks over the answer
    assert any(isinstance(c, Speculate) for c in cmds) and not any(isinstance(c, SpeculateResponse) for c in cmds)
    off = RealtimeSession("sess_e", EnergyVAD(), speculation=Speculation(responses=False))
    cmds = append(off, np.concatenate([silence(0.2), tone(0.8), silence(0.8)]))
    assert not any(isinstance(c, SpeculateResponse) for c in cmds)
    assert next(c for c in cmds if isinstance(c, StartResponse)).speculation is None


def test_the_speculative_pause_is_a_setting():
    late = RealtimeSession("sess_d", EnergyVAD(), speculation=Speculation(pause_ms=400))
    assert not any(isinstance(c, Speculate) for c in append(late, np.concatenate([silence(0.2), tone(0.8),
                                                                                    silence(0.3)])))
    assert any(isinstance(c, SpeculateResponse) for c in append(late, silence(0.2)))
    with pytest.raises(ValueError):
        Speculation(pause_ms=50)


# ---- the same with the real models: Silero, Whisper, the embedded LLM (greedy), Piper ----------------------
def test_committed_speculation_equals_a_plain_run_with_the_real_models(hub, real_engine, say):
    speech = say("What is the capital of France?")

    async def scenario(speculation: Speculation) -> tuple[list[dict], bytes, dict]:
        client = Collector()
        config = replace(SessionConfig(), temperature=0.0, max_output_tokens=40)  # greedy, one short answer
        host = RealtimeHost("sess_real", hub.vad(), config, hub, real_engine,
                            json_sink(client.send, Dialect.GA, "sess_real"), options=PipelineOptions(lead_ms=10_000),
                            speculation=speculation)
        runner = host.runner
        await host.start()
        await send_pcm(runner, np.concatenate([silence(0.3), speech, silence(0.3)]))
        if speculation.responses:
            await until(lambda: prepared(runner), "a speculation on the whole question", timeout=300)
        await send_pcm(runner, silence(0.6))
        await client.wait_for("response.done", timeout=300)
        await host.close()
        return client.events, client.audio(), dict(runner.speculation_counts)

    spec_events, spec_audio, counts = asyncio.run(scenario(Speculation()))
    plain_events, plain_audio, _ = asyncio.run(scenario(Speculation(responses=False)))
    assert counts["committed"] == 1
    done = [e for e in spec_events if e["type"] == "response.done"][-1]["response"]
    assert done["status"] in ("completed", "incomplete") and spec_audio
    assert spec_audio == plain_audio
    assert normalized(spec_events) == normalized(plain_events)
