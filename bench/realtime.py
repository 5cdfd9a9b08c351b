"""Realtime voice chat: turn latency of `/v1/realtime` vs a naive cascade of the same models, same run.

Streaming (the service): the official `openai` SDK talks to `/v1/realtime` on loopback like a voice client
— each question (Piper-synthesised, 24 kHz pcm16) is streamed at real time in 40 ms appends and the
"microphone" keeps streaming silence; server VAD ends the turn, the transcript feeds the LLM, sentences go
to Piper as they are written, audio is paced out. Turn latency = first audio delta received − time the
last speech sample was sent (what the user waits for after they stop talking). The clients run in a
child process, as remote clients would: in the server's process their event parsing would compete with
the server (and the LLM's decode loop) for the GIL.

Cascade (the baseline): the same Whisper, LLM engine and Piper called naively, in-process: whole utterance
→ transcript → whole answer → whole speech. Its latency = the same end-of-turn silence the VAD needs
(`silence_duration_ms`, added as a constant) + the measured compute until the whole answer's audio exists.

Both keep a conversation history per session; both run at 1 and at N concurrent sessions, interleaved
round by round so that both meet the same background load on a shared machine.

    .venv/bin/python -m bench.realtime                  # 20 turns at 1 and 4 sessions, prints the section
    .venv/bin/python -m bench.realtime --record         # ... and writes it into bench/RESULTS.md
    .venv/bin/python -m bench.realtime --turns 4 --concurrency 1   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import pct, start_server, today
from realtime.config import SessionConfig

INSTRUCTIONS = SessionConfig().instructions  # the product's default

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Realtime voice chat"
MACHINE = "2-core CPU (AMD EPYC), no GPU"
QUESTIONS = ["What is the capital of France?", "How many days are in a week?", "What color is the sky?",
             "What is two plus three?", "What do bees make?", "How many legs does a spider have?",
             "What is the opposite of hot?", "Which planet do we live on?", "What language is spoken in Spain?",
             "What is frozen water called?"]
MAX_TOKENS = 60
SILENCE_MS = 500  # server_vad default; the cascade waits for the same end-of-turn silence
CHUNK_S = 0.04


class Reader:
    def __init__(self, conn):
        self.conn, self.events, self.times = conn, [], []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                ev = await self.conn.recv()
                self.events.append(ev)
                self.times.append(time.perf_counter())
        except Exception:
            pass

    def find(self, type_: str, after: int):
        for i in range(after, len(self.events)):
            if self.events[i].type == type_:
                return i
        return None


def speech(tts, text: str) -> tuple[np.ndarray, int]:
    """int16 at 24 kHz with 200 ms of lead-in silence, and the index just after the last audible sample."""
    from realtime.audio import StreamResampler

    pcm = StreamResampler(tts.sample_rate, 24000, dtype="int16")(tts.synthesize_all(text), last=True)
    pcm = np.concatenate([np.zeros(4800, np.int16), pcm])
    loud = np.nonzero(np.abs(pcm) > 300)[0]
    return pcm, int(loud[-1]) + 1


class StreamingClient:
    """One `/v1/realtime` session driven like a voice client: a microphone that never stops sending."""

    def __init__(self, base_url: str, ws_url: str, name: str):
        self.base_url, self.ws_url, self.name, self.turns = base_url, ws_url, name, 0

    async def open(self) -> None:
        import openai

        client = openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key="bench", max_retries=0,
                                    websocket_base_url=self.ws_url + "/v1")
        self.conn = await client.realtime.connect(model="gpt-realtime").enter()
        self.reader = Reader(self.conn)
        await self.conn.session.update(session={"type": "realtime", "instructions": INSTRUCTIONS,
                                                "max_output_tokens": MAX_TOKENS})

    async def close(self) -> None:
        self.reader.task.cancel()
        await self.conn.close()

    async def turn(self, pcm: np.ndarray, end: int) -> dict | None:
        """Speak `pcm` at real time (then silence) until the answer is complete; times from the last speech
        sample sent."""
        reader, step = self.reader, int(24000 * CHUNK_S)
        silence = np.zeros(step, np.int16).tobytes()
        self.turns += 1
        n0 = len(reader.events)
        t0, t_end, i, sent = time.perf_counter(), None, 0, 0
        first_audio = done = None
        while done is None and time.perf_counter() - t0 < 90:
            chunk = pcm[i:i + step].tobytes() if i < len(pcm) else silence
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            i, sent = i + step, sent + 1
            if t_end is None and i >= end:
                t_end = time.perf_counter()
            if first_audio is None:
                first_audio = reader.find("response.output_audio.delta", n0)
            done = reader.find("response.done", n0)
            await asyncio.sleep(max(0.0, t0 + sent * CHUNK_S - time.perf_counter()))
        if first_audio is None or t_end is None:
            print(f"  [{self.name}] turn {self.turns}: no answer audio (timeout)", file=sys.stderr, flush=True)
            return None

        def at(type_: str) -> float | None:
            j = reader.find(type_, n0)
            return reader.times[j] - t_end if j is not None else None

        row = {"latency": reader.times[first_audio] - t_end, "vad": at("input_audio_buffer.speech_stopped"),
               "asr": at("conversation.item.input_audio_transcription.completed"),
               "llm": at("response.output_audio_transcript.delta")}
        j = reader.find("conversation.item.input_audio_transcription.completed", n0)
        heard = reader.events[j].transcript if j is not None else "?"
        answer = "".join(e.delta for e in reader.events[n0:] if e.type == "response.output_audio_transcript.delta")
        print(f"  [{self.name}] turn {self.turns}: {row['latency']:.2f}s  ({heard!r} → {answer.strip()!r})",
              file=sys.stderr, flush=True)
        return row


class CascadeClient:
    """The same models called naively: whole utterance → transcript → whole answer → whole speech."""

    def __init__(self, hub, engine, name: str):
        from realtime.config import SessionConfig
        from runtime.chat_api import ChatMessage

        self.asr, self.tts, self.engine, self.name, self.turns = hub.asr(), hub.tts(), engine, name, 0
        self.temperature = SessionConfig().temperature  # what the realtime session uses
        self.history = [ChatMessage("system", INSTRUCTIONS)]

    async def turn(self, pcm: np.ndarray, end: int) -> dict:
        from asr.whisper_asr import DecodeOptions
        from realtime.audio import StreamResampler
        from runtime.chat_api import ChatMessage, ChatRequest

        self.turns += 1
        audio16 = StreamResampler(24000, 16000)(pcm[:end].astype(np.float32) / 32768, last=True)
        t0 = time.perf_counter()
        heard = (await asyncio.to_thread(self.asr.transcribe, audio16, DecodeOptions(language="en"))).text
        t_asr = time.perf_counter() - t0
        self.history.append(ChatMessage("user", heard))
        answer = ""
        request = ChatRequest(messages=tuple(self.history), max_tokens=MAX_TOKENS, temperature=self.temperature)
        async for d in self.engine.stream(request):
            answer += d.text
        t_llm = time.perf_counter() - t0
        self.history.append(ChatMessage("assistant", answer))
        await asyncio.to_thread(self.tts.synthesize_all, answer)
        wait = SILENCE_MS / 1000
        row = {"latency": wait + time.perf_counter() - t0, "vad": wait, "asr": wait + t_asr, "llm": wait + t_llm}
        print(f"  [{self.name}] turn {self.turns}: {row['latency']:.2f}s  ({heard!r} → {answer.strip()!r})",
              flush=True)
        return row


async def staggered(client, pcm: np.ndarray, end: int, i: int):
    await asyncio.sleep(0.5 * i)  # users do not start talking in the same millisecond
    return await client.turn(pcm, end)


async def client_process(base_url: str, ws_url: str, questions: str, sessions: int) -> None:
    """The child process: `sessions` streaming clients; each stdin line `i,j,…` (question indexes, one per
    session) runs one round and answers with one JSON line of rows."""
    data = np.load(questions)
    streams = [StreamingClient(base_url, ws_url, f"stream {i + 1}/{sessions}") for i in range(sessions)]
    for c in streams:
        await c.open()
    loop = asyncio.get_running_loop()
    try:
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            picks = [int(k) for k in line.split(",")]
            got = await asyncio.gather(*(staggered(c, data[f"pcm{k}"], int(data[f"end{k}"]), i)
                                         for i, (c, k) in enumerate(zip(streams, picks, strict=False))))
            print(json.dumps([g for g in got if g is not None]), flush=True)
    finally:
        for c in streams:
            await c.close()


async def run_interleaved(server, hub, engine, questions: str, picks: list[int], base: list,
                          sessions: int) -> tuple[list[dict], list[dict]]:
    """Rounds of one turn per session: all streaming sessions (in the child process), then all cascades
    (here), the order flipping every round, so both pipelines meet the same background load."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.realtime", "--client", server.base_url, server.ws_url, questions, str(sessions),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).parent.parent))
    cascades = [CascadeClient(hub, engine, f"cascade {i + 1}/{sessions}") for i in range(sessions)]
    rows_s: list[dict] = []
    rows_c: list[dict] = []

    async def stream_round(batch: list[int]) -> None:
        child.stdin.write((",".join(map(str, batch)) + "\n").encode())
        await child.stdin.drain()
        rows_s.extend(json.loads(await child.stdout.readline()))

    async def cascade_round(batch: list[int]) -> None:
        got = await asyncio.gather(*(staggered(c, base[k][0], base[k][1], i)
                                     for i, (c, k) in enumerate(zip(cascades, batch, strict=False))))
        rows_c.extend(got)

    try:
        for r in range(0, len(picks), sessions):
            batch = picks[r:r + sessions]
            rounds = (stream_round, cascade_round) if (r // sessions) % 2 == 0 else (cascade_round, stream_round)
            for run_round in rounds:
                await run_round(batch)
    finally:
        child.stdin.close()
        await child.wait()
    return rows_s, rows_c


def summary(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return f"{pct(vals, 50):.2f} s" if vals else "—"


def markdown(results: list[tuple[str, int, list[dict]]], engine_name: str, asr_name: str, wall: float) -> str:
    out = [SECTION, "",
           f"Date {today()}; machine: {MACHINE}. Embedded preset: Silero VAD, ASR {asr_name} (CTranslate2 int8, "
           f"the service decodes each turn in a 20.4 s window, the cascade calls faster-whisper's 30 s decode), LLM {engine_name} (`runtime.llm`, torch CPU), Piper en_US joe medium. "
           f"Questions are Piper-synthesised and streamed at real time over `/v1/realtime` (official `openai` SDK, "
           f"GA, loopback, clients in a separate process); the session's default instructions (one or two short "
           f"spoken sentences), answers capped at {MAX_TOKENS} tokens; "
           f"server_vad silence_duration_ms={SILENCE_MS}. Turn latency = end of user speech → first answer "
           "audio (streaming: first `response.output_audio.delta` received by the client; cascade: whole "
           "answer synthesised, plus the same 500 ms end-of-turn silence).", "",
           "| pipeline | sessions | turns | p50 | p90 | speech end → turn committed (p50) | → transcript | "
           "→ first LLM text | → first audio |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, sessions, rows in results:
        lat = [r["latency"] for r in rows]
        if not lat:
            out.append(f"| {name} | {sessions} | 0 | — | — | — | — | — | — |")
            continue
        out.append(f"| {name} | {sessions} | {len(lat)} | {pct(lat, 50):.2f} s | {pct(lat, 90):.2f} s | "
                   f"{summary(rows, 'vad')} | {summary(rows, 'asr')} | {summary(rows, 'llm')} | "
                   f"{summary(rows, 'latency')} |")
    out += ["", "Streaming and cascade turns alternate round by round (one turn per session per round, the order "
            "flipping every round), so both meet the same background load. The cascade's \"turn committed\" column "
            "is the assumed end-of-turn silence, not a measurement. The breakdown columns are p50s of times from the "
            "end of speech, so they show where a turn's wait goes: the VAD's 500 ms of silence, the Whisper decode "
            "(started speculatively 160 ms into the silence), the LLM's first token, then the first TTS chunk "
            "(a sentence, or the first words after 600 ms). Timings move by up to ~2× when other jobs share the "
            "cores; compare rows of one run only. "
            f"Bench wall time {wall:.0f} s (`python -m bench.realtime`).", ""]
    return "\n".join(out)


def record(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(SECTION)
    if start >= 0:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + (text[nxt + 1:] if nxt >= 0 else "")
    RESULTS.write_text(text.rstrip("\n") + "\n\n" + section)
    print(f"[bench.realtime] wrote {SECTION!r} in {RESULTS}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=20, help="turns per configuration (split across sessions)")
    ap.add_argument("--concurrency", default="1,4", help="comma-separated session counts")
    ap.add_argument("--record", action="store_true", help=f"write the section into {RESULTS}")
    ap.add_argument("--client", nargs=4, metavar=("BASE_URL", "WS_URL", "QUESTIONS", "SESSIONS"),
                    help=argparse.SUPPRESS)  # the child process that runs the streaming clients
    args = ap.parse_args(argv)
    if args.client:
        base_url, ws_url, questions, sessions = args.client
        asyncio.run(client_process(base_url, ws_url, questions, int(sessions)))
        return 0
    from realtime.engine_provider import engine_unavailable_reason

    reason = engine_unavailable_reason()
    if reason:
        print(f"[bench.realtime] skipped: {reason}")
        return 0
    t_start = time.perf_counter()
    print("[bench.realtime] starting the server and loading the models…", flush=True)
    server = start_server()
    hub = server.app.state.hub
    from runtime.llm import get_engine

    engine = get_engine()
    server.app.state.chat_engine = engine
    tts = hub.tts()
    base = [speech(tts, q) for q in QUESTIONS]
    picks = [i % len(base) for i in range(args.turns)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        questions = str(Path(tmp) / "questions.npz")
        np.savez(questions, **{f"pcm{k}": pcm for k, (pcm, _) in enumerate(base)},
                 **{f"end{k}": end for k, (_, end) in enumerate(base)})
        try:
            for sessions in (int(c) for c in args.concurrency.split(",")):
                print(f"[bench.realtime] {sessions} session(s): {len(picks)} streaming turns interleaved with "
                      f"{len(picks)} cascade turns", flush=True)
                rows_s, rows_c = asyncio.run(run_interleaved(server, hub, engine, questions, picks, base, sessions))
                results += [("streaming `/v1/realtime`", sessions, rows_s), ("naive cascade", sessions, rows_c)]
        finally:
            server.stop()
    section = markdown(results, getattr(engine, "model_id", type(engine).__name__), hub.settings.asr_model,
                       time.perf_counter() - t_start)
    print(section)
    if args.record:
        record(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
