"""Voice-turn latency (issue 18 goals): the user's last word → the first answer audio, against a naive cascade.

What it measures
- **Clips.** Spoken questions in voices the service was never tuned on: espeak-ng (several accents, variants and
  rates) and Piper's joe voice at other speeds (the service answers with Piper joe at its default speed; no other
  Piper voice is packaged). Deterministic: every run hears the same clips. 24 kHz pcm16, 0.5 s of lead-in.
- **True end of speech**, from the clip itself, offline: the last sample above an energy threshold (35 dB below
  the clip's loudest 10 ms, at least -55 dBFS). Not the server's VAD.
- **Streaming (the service).** The server runs the embedded preset in its own process (`bench.load.Server`), on a
  free port. Each session is a websocket client of `/v1/realtime` (OpenAI Realtime, GA events; beta aliases
  accepted) whose microphone never stops: 20 ms frames on a real-time clock, the clip when one is due, silence
  otherwise. The server's default turn detection, unless `--turn-detection`. L_user = arrival of the first
  `response.output_audio.delta` (or beta `response.audio.delta`) of the first response created after the true
  end of speech − the wall time of that end on the microphone's clock (frame k holds the audio of
  [t0 + 20k ms, t0 + 20(k+1) ms) and is sent at its end, as a microphone would deliver it).
- **Naive cascade (the peer)**, in this process, on the same clips and the same libraries: an energy end-pointer
  with a fixed 500 ms of silence → Whisper on the whole utterance (the same model as the server's) → the whole
  LLM answer (the same embedded engine, `runtime.llm.get_engine`, same instructions and temperature) → Piper on
  the whole answer. L_user = the end-pointer's wait (from the true end of speech) + the measured compute until
  the answer's audio exists (its first sample is ready only when the whole answer is). Streaming and cascade
  rounds alternate (the order flipping each round), so both meet the same background load.
- **Pause set.** Questions spoken in two halves with a 300–700 ms silence between them (espeak-ng: one SSML
  utterance with a break, so the first half keeps its non-final intonation, split at the break and re-joined
  with an exact silence; Piper: the halves synthesised apart). A false cut-off = a response created before the
  second half's true end of speech (the assistant answering half a question); for the cascade, its end-pointer
  firing inside the pause.
- **Concurrency.** `--sessions N` runs N sessions at once (staggered starts); p95 is reported, and whether the
  input kept real time: each frame's send lateness p99 < 0.2 s (a server that stops reading backs the socket
  up) and VAD lag p95 < 0.5 s (`speech_stopped` arrival − the wall time of its `audio_end_ms` on the
  microphone's clock − the longest silence the session's turn detection waits: how far the server's input
  processing runs behind). Playback stalls of a simulated player fed the deltas as they arrive are reported too.
- Also: where the wait goes (p50 from the true end to `speech_stopped`, the input transcript, the first answer
  text; the cascade's end-point, transcript, first and whole answer), and the input WER of what each pipeline
  heard. A conversation lasts `--turns-per-session` turns (10), then the session and the cascade's history are
  renewed, so prompts stay the size of a real conversation's. One warm-up turn per set is not counted. Progress
  is one line per turn on stdout; the JSON (`--out`) holds every turn.

    .venv/bin/python -m bench.voice_turn --quick                      # a few turns of each set, a look
    .venv/bin/python -m bench.voice_turn --turns 50 --out artifacts/voice_turn-1.json
    .venv/bin/python -m bench.voice_turn --set pause --turns 50 --out artifacts/voice_turn-pause.json
    .venv/bin/python -m bench.voice_turn --sessions 4 --turns 60 --no-peer --out artifacts/voice_turn-4.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.common import machine, pct, today
from bench.load import longest_turn_silence_s

RATE = 24000
FRAME_S = 0.02
FRAME = int(RATE * FRAME_S)
LEAD_S = 0.5  # silence before each question
GAP_S = 0.8  # silence after an answer before the next question
TURN_TIMEOUT_S = 40.0  # after the end of speech; a turn not answered by then counts as unanswered
ENDPOINT_SILENCE_S = 0.5  # the naive cascade's fixed end-pointing silence
ENDPOINT_DBFS = -45.0  # its speech/silence decision per 20 ms frame
REALTIME_INPUT_LAG_P99_S = 0.2
REALTIME_VAD_LAG_P95_S = 0.5
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")
TEXT_DELTAS = ("response.output_audio_transcript.delta", "response.audio_transcript.delta")
GOALS = {"p50_s": 0.45, "p90_s": 0.7, "ratio": 0.4, "p95_4_sessions_s": 1.2, "false_cutoff_rate": 0.05}

QUESTIONS = (
    "What is the capital of France?", "How many days are in a week?", "What color is the sky on a clear day?",
    "What is two plus three?", "What do bees make?", "How many legs does a spider have?",
    "What is the opposite of hot?", "Which planet do we live on?", "What language is spoken in Spain?",
    "What is frozen water called?", "Can you tell me how many minutes are in an hour?",
    "Which animal is known as the king of the jungle?", "What is the largest ocean on Earth?",
    "How many wheels does a bicycle have?", "What do you call a baby cat?", "What is the boiling point of water?",
    "Who wrote Romeo and Juliet?", "What gas do plants take in from the air?", "How many months have thirty days?",
    "What is the tallest mountain in the world?", "Could you suggest a good name for a dog?",
    "What is the main ingredient of guacamole?", "How far away is the moon?", "What should I cook for dinner tonight?",
    "Why is the sea salty?",
)
PAUSE_QUESTIONS = (
    ("What is the capital", "of France?"), ("How many legs", "does a spider have?"),
    ("I was wondering", "how many days there are in a week."), ("Can you tell me", "what bees make?"),
    ("Which planet", "do we live on?"), ("What is the opposite", "of hot?"),
    ("Could you tell me", "who wrote Romeo and Juliet?"), ("What is the largest ocean", "on Earth?"),
    ("How many wheels", "does a bicycle have?"), ("What do you call", "a baby cat?"),
    ("So, what should I cook", "for dinner tonight?"), ("What language", "is spoken in Spain?"),
    ("Why is", "the sea salty?"),
)
PAUSES_MS = (300, 400, 500, 600, 700)
#: ("espeak", voice+variant, words per minute) or ("piper", speed, prosody noise); 8 voices, coprime with the
#: question counts so that the (question, voice) pairs do not repeat for a long while. No Piper noise: sampled
#: noise cannot be seeded (it is drawn inside the ONNX graph), and runs must hear the same clips.
VOICES = (("espeak", "en-us+f3", 165), ("espeak", "en-gb+m3", 150), ("piper", 0.85, 0.0),
          ("espeak", "en-gb-scotland", 180), ("espeak", "en-029+f2", 160), ("piper", 1.2, 0.0),
          ("espeak", "en-us-nyc+Andy", 190), ("espeak", "en-gb-x-rp+f4", 140))


# ---- clips ---------------------------------------------------------------------------------------------------
@dataclass
class Clip:
    name: str  # e.g. "espeak:en-gb+m3@150"
    text: str
    pcm: np.ndarray  # int16 at 24 kHz: lead-in, speech, nothing after the last sample
    end: int  # true end of speech: index just after the last sample above the energy threshold
    pause_ms: int | None = None  # pause set: the silence inside the question
    first_half_end: int | None = None

    @property
    def speech_s(self) -> float:
        return self.end / RATE - LEAD_S


def energy_threshold(x: np.ndarray) -> float:
    """Amplitude threshold of speech in `x` (float, ±1): 35 dB below its loudest 10 ms, at least -55 dBFS."""
    win = RATE // 100
    n = max(1, len(x) // win)
    rms = np.sqrt((np.pad(x, (0, max(0, n * win - len(x))))[:n * win].reshape(n, win) ** 2).mean(axis=1))
    return max(float(rms.max()) * 10 ** (-35 / 20), 10 ** (-55 / 20))


def speech_bounds(pcm: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) sample whose magnitude clears the clip's energy threshold, smoothed over 10 ms so that
    one click does not count: the last 10 ms window with RMS above it, then its last sample above it."""
    x = pcm.astype(np.float32) / 32768
    thr, win = energy_threshold(x), RATE // 100
    n = -(-len(x) // win)
    x = np.pad(x, (0, n * win - len(x)))
    rms = np.sqrt((x[:n * win].reshape(n, win) ** 2).mean(axis=1))
    loud = np.nonzero(rms > thr)[0]
    if not len(loud):
        return 0, 0
    a, b = loud[0] * win, (loud[-1] + 1) * win
    first = a + int(np.argmax(np.abs(x[a:a + win]) > thr))
    tail = np.nonzero(np.abs(x[b - win:b]) > thr)[0]
    return first, b - win + (int(tail[-1]) + 1 if len(tail) else win)


def naive_endpoints(pcm: np.ndarray) -> list[int]:
    """Where a fixed-silence end-pointer ends turns: the sample at which 500 ms of non-speech 20 ms frames
    (RMS below -45 dBFS) has followed speech. One entry per turn it would have ended."""
    x = pcm.astype(np.float32) / 32768
    n = len(x) // FRAME
    rms = np.sqrt((x[:n * FRAME].reshape(n, FRAME) ** 2).mean(axis=1))
    speech = 20 * np.log10(rms + 1e-9) > ENDPOINT_DBFS
    need, quiet, active, out = round(ENDPOINT_SILENCE_S / FRAME_S), 0, False, []
    for k in range(n + need):  # past the clip the microphone sends silence
        if k < n and speech[k]:
            active, quiet = True, 0
        elif active:
            quiet += 1
            if quiet == need:
                out.append((k + 1) * FRAME)
                active, quiet = False, 0
    return out


def _to_24k(audio: np.ndarray, rate: int) -> np.ndarray:
    from realtime.audio import StreamResampler

    return StreamResampler(rate, RATE)(np.asarray(audio, np.float32), last=True)  # float ±1


def espeak(text: str, voice: str, wpm: int, ssml: bool = False) -> np.ndarray:
    import soundfile

    cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout"] + (["-m"] if ssml else []) + [text]
    wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return _to_24k(audio, rate)


def piper(tts, text: str, speed: float, noise: float) -> np.ndarray:
    from piper import SynthesisConfig

    from tts.piper_tts import length_scale_for

    config = SynthesisConfig(length_scale=length_scale_for(speed), noise_scale=noise, noise_w_scale=noise)
    parts = [c.audio_int16_array for c in tts.voice.synthesize(text, config)]
    return _to_24k(np.concatenate(parts).astype(np.float32) / 32768, tts.sample_rate)


def speak(tts, voice: tuple, text: str) -> np.ndarray:
    kind, a, b = voice
    return espeak(text, a, b) if kind == "espeak" else piper(tts, text, a, b)


def voice_name(voice: tuple) -> str:
    kind, a, b = voice
    return f"espeak:{a}@{b}wpm" if kind == "espeak" else f"piper:joe@{a}x,noise{b}"


def _trimmed(x: np.ndarray) -> np.ndarray:
    first, end = speech_bounds(_pcm16(x))
    return x[first:end]


def _pcm16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1, 1) * 32767).astype(np.int16)


def halves(tts, voice: tuple, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """The two halves of a paused question, each trimmed to its speech. espeak-ng speaks them as one utterance
    with an SSML break (the first half keeps its non-final intonation) and the break is cut out; Piper has no
    break, so its halves are synthesised apart."""
    if voice[0] == "espeak":
        x = espeak(f'<speak>{a} <break time="800ms"/> {b}</speak>', voice[1], voice[2], ssml=True)
        thr, win = energy_threshold(x), RATE // 100
        n = len(x) // win
        quiet = np.sqrt((x[:n * win].reshape(n, win) ** 2).mean(axis=1)) <= thr
        loud = np.nonzero(~quiet)[0]
        best, run, start = (0, 0), 0, 0
        for k in range(loud[0], loud[-1]):  # the longest quiet run inside the speech is the break
            if quiet[k]:
                start, run = (k, 1) if run == 0 else (start, run + 1)
                if run > best[1]:
                    best = (start, run)
            else:
                run = 0
        if best[1] * win >= 0.4 * RATE:
            cut = (best[0] + best[1] // 2) * win
            return _trimmed(x[:cut]), _trimmed(x[cut:])
    return _trimmed(speak(tts, voice, a)), _trimmed(speak(tts, voice, b))


def make_clip(name: str, text: str, speech: np.ndarray, pause: tuple[np.ndarray, int] | None = None) -> Clip:
    lead = np.zeros(int(LEAD_S * RATE), np.float32)
    if pause is None:
        audio = np.concatenate([lead, _trimmed(speech)])
        pcm = _pcm16(audio)
        return Clip(name, text, pcm, speech_bounds(pcm)[1])
    second, pause_ms = pause
    first = np.concatenate([lead, speech])
    audio = np.concatenate([first, np.zeros(pause_ms * RATE // 1000, np.float32), second])
    pcm = _pcm16(audio)
    return Clip(name, text, pcm, speech_bounds(pcm)[1], pause_ms, len(first))


def build_clips(tts, kind: str, count: int, offset: int = 0) -> list[Clip]:
    clips = []
    for i in range(offset, offset + count):
        voice = VOICES[i % len(VOICES)]
        name = voice_name(voice)
        if kind == "main":
            text = QUESTIONS[i % len(QUESTIONS)]
            clips.append(make_clip(name, text, speak(tts, voice, text)))
        else:
            a, b = PAUSE_QUESTIONS[i % len(PAUSE_QUESTIONS)]
            pause_ms = PAUSES_MS[(i // len(PAUSE_QUESTIONS) + i) % len(PAUSES_MS)]
            first, second = halves(tts, voice, a, b)
            clips.append(make_clip(name, f"{a} … {b}", first, (second, pause_ms)))
    return clips


# ---- the streaming client --------------------------------------------------------------------------------------
@dataclass
class Response:
    created: float
    first_audio: float | None = None
    first_text: float | None = None
    done: float | None = None
    status: str | None = None
    text: str = ""
    player_end: float | None = None  # when the simulated player's queued audio runs out
    audio_s: float = 0.0
    stall_s: float = 0.0


@dataclass
class TurnResult:
    pipeline: str  # "stream" | "cascade"
    set: str  # "main" | "pause"
    session: int
    clip: str
    text: str
    pause_ms: int | None
    l_user_s: float | None  # None: not answered (after the end of speech)
    false_cutoff: bool
    heard: str = ""
    answer: str = ""
    to_stopped_s: float | None = None  # stream: speech_stopped; cascade: the end-pointer's wait
    to_transcript_s: float | None = None
    to_first_text_s: float | None = None
    to_answer_s: float | None = None  # cascade: the whole LLM answer written
    audio_s: float = 0.0
    stall_s: float = 0.0


class StreamTurn:
    def __init__(self, clip: Clip, t_clip: float):
        self.clip = clip
        self.t_end = t_clip + clip.end / RATE
        self.responses: dict[str, Response] = {}
        self.stopped = self.transcript = None
        self.heard = ""

    def answered(self) -> Response | None:
        after = [r for r in self.responses.values() if r.created >= self.t_end]
        return min(after, key=lambda r: r.created) if after else None

    def finished(self, now: float) -> bool:
        r = self.answered()
        pending = any(x.done is None for x in self.responses.values())
        return (r is not None and r.done is not None and not pending) or now - self.t_end > TURN_TIMEOUT_S


class VoiceSession:
    """One `/v1/realtime` connection with a microphone that never stops sending."""

    def __init__(self, index: int, ws_url: str, session: dict):
        self.index, self.ws_url, self.session = index, ws_url, session
        self.lags: list[float] = []  # send lateness of the frames sent during a turn
        self.turn: StreamTurn | None = None
        self.errors: list[str] = []
        #: speech_stopped arrival − the wall time of the audio it names as the speech's end − the silence the
        #: server's turn detection waits for at most: how far its input processing runs behind real time
        self.vad_lags: list[float] = []
        self.turn_detection: dict | None = None
        self.silence_s = 0.5  # the longest silence its turn detection waits (from session.updated)

    async def open(self) -> None:
        import websockets

        self.ws = await websockets.connect(self.ws_url + "/v1/realtime?model=gpt-realtime", max_size=None,
                                           open_timeout=60)
        self.updated = asyncio.Event()
        self.reader = asyncio.create_task(self._read())
        await self.ws.send(json.dumps({"type": "session.update", "session": self.session}))
        await asyncio.wait_for(self.updated.wait(), 30)
        self.next_clip: Clip | None = None
        self.started: asyncio.Future | None = None
        self.t0, self.k = time.perf_counter(), 0
        self.mic = asyncio.create_task(self._microphone())

    async def close(self) -> None:
        self.mic.cancel()
        self.reader.cancel()
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass

    async def _microphone(self) -> None:
        silence = np.zeros(FRAME, np.int16)
        cursor: tuple[Clip, int] | None = None
        while True:
            due = self.t0 + (self.k + 1) * FRAME_S  # frame k's audio is all there at its end
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if cursor is None and self.next_clip is not None:
                cursor, self.next_clip = (self.next_clip, 0), None
                self.started.set_result(self.t0 + self.k * FRAME_S)
            if cursor is not None:
                clip, i = cursor
                frame = clip.pcm[i:i + FRAME]
                frame = np.pad(frame, (0, FRAME - len(frame))) if len(frame) < FRAME else frame
                cursor = (clip, i + FRAME) if i + FRAME < len(clip.pcm) else None
            else:
                frame = silence
            await self.ws.send(json.dumps({"type": "input_audio_buffer.append",
                                           "audio": base64.b64encode(frame.astype("<i2").tobytes()).decode()}))
            if self.turn is not None:
                self.lags.append(max(0.0, time.perf_counter() - due))
            self.k += 1

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self._on_event(json.loads(message), time.perf_counter())
        except Exception as exc:
            self.errors.append(f"connection closed: {exc}")

    def _on_event(self, ev: dict, now: float) -> None:
        kind, turn = ev.get("type"), self.turn
        if kind == "session.updated":
            self.turn_detection = ((ev["session"].get("audio") or {}).get("input") or {}).get("turn_detection")
            self.silence_s = longest_turn_silence_s(ev["session"])
            self.updated.set()
        elif kind == "input_audio_buffer.speech_stopped" and "audio_end_ms" in ev and turn is not None:
            self.vad_lags.append(now - (self.t0 + ev["audio_end_ms"] / 1000) - self.silence_s)
        elif kind == "error":
            self.errors.append(str((ev.get("error") or {}).get("message")))
        if turn is None:
            return
        if kind == "input_audio_buffer.speech_stopped" and turn.stopped is None and now >= turn.t_end:
            turn.stopped = now
        elif kind == "conversation.item.input_audio_transcription.completed":
            if now >= turn.t_end:
                turn.transcript = turn.transcript or now
            turn.heard = (turn.heard + " " + ev.get("transcript", "")).strip()  # a cut-off turn has two
        elif kind == "response.created":
            turn.responses[ev["response"]["id"]] = Response(now)
        elif kind in AUDIO_DELTAS or kind in TEXT_DELTAS or kind == "response.done":
            rid = ev["response"]["id"] if kind == "response.done" else ev.get("response_id")
            r = turn.responses.get(rid)
            if r is None:
                return
            if kind == "response.done":
                r.done, r.status = now, ev["response"].get("status")
            elif kind in TEXT_DELTAS:
                r.first_text = r.first_text or now
                r.text += ev.get("delta", "")
            else:
                seconds = len(base64.b64decode(ev["delta"])) / 2 / RATE
                if r.first_audio is None:
                    r.first_audio, r.player_end = now, now
                elif now > r.player_end:  # the player ran dry: a stall
                    r.stall_s += now - r.player_end
                    r.player_end = now
                r.player_end += seconds
                r.audio_s += seconds

    async def run_turn(self, clip: Clip, set_name: str) -> TurnResult:
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.next_clip = clip
        try:
            t_clip = await asyncio.wait_for(self.started, 30)
        except asyncio.TimeoutError:
            raise RuntimeError(f"session {self.index}: the microphone stopped ({self.mic!r}; {self.errors})") from None
        self.turn = turn = StreamTurn(clip, t_clip)
        while not turn.finished(time.perf_counter()):
            await asyncio.sleep(0.05)
        self.turn = None
        await asyncio.sleep(GAP_S)
        r = turn.answered()

        def since(t: float | None) -> float | None:
            return None if t is None else t - turn.t_end

        return TurnResult(
            "stream", set_name, self.index, clip.name, clip.text, clip.pause_ms,
            since(r.first_audio) if r is not None else None,
            any(x.created < turn.t_end for x in turn.responses.values()),
            heard=turn.heard, answer=(r.text.strip() if r is not None else ""),
            to_stopped_s=since(turn.stopped), to_transcript_s=since(turn.transcript),
            to_first_text_s=since(r.first_text) if r is not None else None,
            audio_s=r.audio_s if r is not None else 0.0, stall_s=r.stall_s if r is not None else 0.0)


# ---- the naive cascade -----------------------------------------------------------------------------------------
class Cascade:
    """The same models called naively: end-point on 500 ms of silence, then whole transcript → whole answer →
    whole speech, one step after the other."""

    def __init__(self, hub, index: int, max_tokens: int):
        from realtime.config import SessionConfig

        config = SessionConfig()
        self.asr, self.tts, self.engine, self.beam_size = hub.asr(), hub.tts(), hub.llm(), hub.asr_beam_size
        self.index, self.max_tokens, self.temperature = index, max_tokens, config.temperature
        self.instructions = config.instructions
        self.reset()

    def reset(self) -> None:
        from runtime.chat_api import ChatMessage

        self.history = [ChatMessage("system", self.instructions)]

    async def run_turn(self, clip: Clip, set_name: str) -> TurnResult:
        from realtime.audio import StreamResampler
        from runtime.chat_api import ChatMessage, ChatRequest

        points = naive_endpoints(clip.pcm)
        final = next((p for p in points if p >= clip.end), None)
        if final is None:  # cannot happen: silence follows the clip
            final = clip.end + int(ENDPOINT_SILENCE_S * RATE)
        cut_off = clip.pause_ms is not None and any(p < clip.end for p in points)
        wait = (final - clip.end) / RATE
        audio = np.concatenate([clip.pcm, np.zeros(max(0, final - len(clip.pcm)), np.int16)])[:final]
        audio16 = StreamResampler(RATE, 16000)(audio.astype(np.float32) / 32768, last=True)
        t0 = time.perf_counter()
        # the service's whole-turn decode (same model, window, language and beam), on the whole utterance
        heard = await asyncio.to_thread(self.asr.transcribe_utterance, audio16, "en", None, self.beam_size)
        t_asr = time.perf_counter() - t0
        self.history.append(ChatMessage("user", heard))
        answer, t_text = "", None
        request = ChatRequest(messages=tuple(self.history), max_tokens=self.max_tokens, temperature=self.temperature)
        async for d in self.engine.stream(request):
            if d.text and t_text is None:
                t_text = time.perf_counter() - t0
            answer += d.text
        t_answer = time.perf_counter() - t0
        self.history.append(ChatMessage("assistant", answer))
        speech = await asyncio.to_thread(self.tts.synthesize_all, answer)
        compute = time.perf_counter() - t0
        return TurnResult("cascade", set_name, self.index, clip.name, clip.text, clip.pause_ms, wait + compute,
                          cut_off, heard=heard, answer=answer.strip(), to_stopped_s=wait,
                          to_transcript_s=wait + t_asr, to_first_text_s=None if t_text is None else wait + t_text,
                          to_answer_s=wait + t_answer,
                          audio_s=len(speech) / self.tts.sample_rate)


# ---- a run -----------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    total: int
    done: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def report(self, row: TurnResult) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        lat = "no answer" if row.l_user_s is None else f"L_user {row.l_user_s:.2f} s"
        cut = "  FALSE CUT-OFF" if row.false_cutoff else ""
        print(f"  [{self.done}/{self.total}, eta {eta / 60:.1f} min] {row.pipeline} {row.set} s{row.session} "
              f"{row.clip}: {lat}{cut}  ({row.heard.strip()!r} → {row.answer[:70]!r})", flush=True)


async def staggered(i: int, coro):
    await asyncio.sleep(0.37 * i)  # callers do not start talking in the same instant
    return await coro


async def run_set(set_name: str, clips: list[Clip], warmup: Clip, ws_url: str, session: dict, hub, args,
                  progress: Progress) -> tuple[list[TurnResult], list[VoiceSession]]:
    """Rounds of one turn per session: the streaming sessions, then the cascades on the same clips (order
    flipping each round). A session (and its cascade's history) is renewed every --turns-per-session turns."""
    n = args.sessions
    voices = [VoiceSession(i, ws_url, session) for i in range(n)]
    cascades = [Cascade(hub, i, args.max_tokens) for i in range(n)] if hub is not None else []
    rows: list[TurnResult] = []
    used: list[VoiceSession] = []
    await asyncio.gather(*(v.open() for v in voices))
    try:
        print(f"[voice_turn] {set_name}: warm-up turn (not counted)…", flush=True)
        await voices[0].run_turn(warmup, set_name)
        if cascades:
            await cascades[0].run_turn(warmup, set_name)
            cascades[0].reset()
        for r, start in enumerate(range(0, len(clips), n)):
            batch = clips[start:start + n]
            if r and r % args.turns_per_session == 0:  # a new conversation: renew the sessions
                for v in voices:
                    await v.close()
                used += voices
                voices = [VoiceSession(i, ws_url, session) for i in range(n)]
                await asyncio.gather(*(v.open() for v in voices))
                for c in cascades:
                    c.reset()

            async def stream_round() -> None:
                for row in await asyncio.gather(*(staggered(i, v.run_turn(c, set_name))
                                                  for i, (v, c) in enumerate(zip(voices, batch)))):
                    rows.append(row)
                    progress.report(row)

            async def cascade_round() -> None:
                for row in await asyncio.gather(*(staggered(i, k.run_turn(c, set_name))
                                                  for i, (k, c) in enumerate(zip(cascades, batch)))):
                    rows.append(row)
                    progress.report(row)

            order = [stream_round] + ([cascade_round] if cascades else [])
            for step in (order if r % 2 == 0 else order[::-1]):
                await step()
    finally:
        for v in voices:
            await v.close()
        used += voices
    return rows, used


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def summarize(rows: list[TurnResult], sessions: list[VoiceSession] | None) -> dict:
    lat = [r.l_user_s for r in rows if r.l_user_s is not None]
    out = {"turns": len(rows), "answered": len(lat), "false_cutoffs": sum(r.false_cutoff for r in rows)}
    for q in (50, 90, 95):
        out[f"p{q}_s"] = _r(pct(lat, q)) if lat else None
    for key in ("to_stopped_s", "to_transcript_s", "to_first_text_s", "to_answer_s"):
        vals = [getattr(r, key) for r in rows if getattr(r, key) is not None]
        out[key[:-2] + "_p50_s"] = _r(pct(vals, 50)) if vals else None
    out["false_cutoff_rate"] = round(out["false_cutoffs"] / len(rows), 3) if rows else None
    if rows:  # how well the question was heard (the service's transcript event; the cascade's own decode)
        from asr.textnorm import word_error_rate

        out["input_wer"] = round(word_error_rate([r.text for r in rows], [r.heard for r in rows]), 3)
    if sessions is not None:
        lags = [x for s in sessions for x in s.lags]
        audio, stall = sum(r.audio_s for r in rows), sum(r.stall_s for r in rows)
        out["input_lag_p99_s"] = _r(pct(lags, 99)) if lags else None
        out["input_lag_max_s"] = _r(max(lags)) if lags else None
        out["stall_ratio"] = round(stall / audio, 4) if audio else None
        vad = [x for s in sessions for x in s.vad_lags]
        out["vad_lag_p95_s"] = _r(pct(vad, 95)) if vad else None
        out["realtime"] = (bool(lags) and pct(lags, 99) < REALTIME_INPUT_LAG_P99_S
                           and (not vad or pct(vad, 95) < REALTIME_VAD_LAG_P95_S))
        out["turn_detection"] = sessions[0].turn_detection if sessions else None
        out["errors"] = sorted({e for s in sessions for e in s.errors})
    return out


def _f(x, unit: str = " s") -> str:
    return "—" if x is None else (f"{x:.2f}{unit}" if isinstance(x, float) else str(x))


def table(results: dict, n: int) -> str:
    head = ("| set | pipeline | sessions | turns | answered | L_user p50 | p90 | p95 | false cut-offs | "
            "→ speech_stopped / end-point | → transcript | → first text | → whole answer | input lag p99 | "
            "VAD lag p95 | real time | stalls | input WER |")
    lines = [head, "|" + "---|" * 18]
    for key, s in results.items():
        set_name, pipeline = key.split("/")
        stream = pipeline == "stream"
        lines.append(
            f"| {set_name} | {'streaming /v1/realtime' if stream else 'naive cascade'} | {n} | {s['turns']} | "
            f"{s['answered']} | {_f(s['p50_s'])} | {_f(s['p90_s'])} | {_f(s['p95_s'])} | "
            f"{s['false_cutoffs']} ({_f(s['false_cutoff_rate'], '')}) | {_f(s['to_stopped_p50_s'])} | "
            f"{_f(s['to_transcript_p50_s'])} | {_f(s['to_first_text_p50_s'])} | {_f(s['to_answer_p50_s'])} | "
            f"{_f(s.get('input_lag_p99_s')) if stream else '—'} | {_f(s.get('vad_lag_p95_s')) if stream else '—'} | "
            f"{('yes' if s.get('realtime') else 'NO') if stream else '—'} | "
            f"{_f(s.get('stall_ratio'), '') if stream else '—'} | {_f(s.get('input_wer'), '')} |")
    return "\n".join(lines)


def goals(results: dict, n: int) -> list[str]:
    out = []
    main, peer = results.get("main/stream"), results.get("main/cascade")
    if main and main["p50_s"] is not None:
        if n == 1:
            out.append(f"L_user p50 {main['p50_s']:.2f} s (goal ≤ {GOALS['p50_s']}), p90 {main['p90_s']:.2f} s "
                       f"(goal ≤ {GOALS['p90_s']}): {'met' if main['p50_s'] <= GOALS['p50_s'] and main['p90_s'] <= GOALS['p90_s'] else 'MISSED'}")
        else:
            ok = main["p95_s"] <= GOALS["p95_4_sessions_s"] and main["realtime"]
            out.append(f"{n} sessions: L_user p95 {main['p95_s']:.2f} s (goal ≤ {GOALS['p95_4_sessions_s']} at 4), "
                       f"input real time: {'yes' if main['realtime'] else 'NO'}: {'met' if ok else 'MISSED'}")
        if peer and peer["p50_s"]:
            ratio = main["p50_s"] / peer["p50_s"]
            out.append(f"ratio streaming / naive cascade: p50 {ratio:.2f}× (goal ≤ {GOALS['ratio']}×), p90 "
                       f"{main['p90_s'] / peer['p90_s']:.2f}×: {'met' if ratio <= GOALS['ratio'] else 'MISSED'}")
    pause = results.get("pause/stream")
    if pause and pause["turns"]:
        out.append(f"pause set: {pause['false_cutoffs']}/{pause['turns']} false cut-offs "
                   f"({pause['false_cutoff_rate']:.0%}; goal ≤ {GOALS['false_cutoff_rate']:.0%}): "
                   f"{'met' if pause['false_cutoff_rate'] <= GOALS['false_cutoff_rate'] else 'MISSED'}")
    return out


def llm_description(engine) -> dict:
    """The embedded LLM both pipelines use (the server's follows the same environment as this process)."""
    import os

    from runtime.llm import default_model, loader

    backend = os.environ.get("VOXLINE_LLM_BACKEND") or getattr(loader, "DEFAULT_BACKEND", None)
    return {"model": default_model(), "backend": backend,
            "peer_engine": None if engine is None else type(getattr(engine, "inner", engine)).__name__}


def parse_turn_detection(value: str | None) -> dict | None:
    """`server_vad[:SILENCE_MS]` or `semantic_vad[:EAGERNESS]`; None: the server's default."""
    if not value:
        return None
    kind, _, arg = value.partition(":")
    if kind == "server_vad":
        return {"type": kind, **({"silence_duration_ms": int(arg)} if arg else {})}
    if kind == "semantic_vad":
        return {"type": kind, **({"eagerness": arg} if arg else {})}
    raise SystemExit("--turn-detection: server_vad[:SILENCE_MS] or semantic_vad[:low|medium|high|auto]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("main", "pause", "both"), default="main",
                    help="main questions, the pause set, or both (default main)")
    ap.add_argument("--turns", type=int, default=50, help="measured turns per set, all sessions together (default 50)")
    ap.add_argument("--quick", action="store_true", help="a look: 4 turns per set (both sets unless --set given)")
    ap.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    ap.add_argument("--no-peer", action="store_true", help="skip the naive cascade")
    ap.add_argument("--turn-detection", help="server_vad[:SILENCE_MS] | semantic_vad[:EAGERNESS] (default: the "
                                             "server's default)")
    ap.add_argument("--max-tokens", type=int, default=60, help="answer length cap, both pipelines (default 60)")
    ap.add_argument("--turns-per-session", type=int, default=10,
                    help="turns per conversation before a session is renewed (default 10)")
    ap.add_argument("--url", help="a running server on loopback (default: start one, embedded preset)")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.quick:
        args.turns = 4 * args.sessions if args.sessions > 1 else 4
        if "--set" not in argv:
            args.set = "both"
    if not 1 <= args.sessions <= 16 or args.turns < 1:
        raise SystemExit("--sessions must be 1–16 and --turns ≥ 1")
    turn_detection = parse_turn_detection(args.turn_detection)
    session: dict = {"type": "realtime", "max_output_tokens": args.max_tokens}
    if turn_detection:
        session["audio"] = {"input": {"turn_detection": turn_detection}}

    from audio_server.models import ModelHub
    from audio_server.settings import Settings
    from bench.load import Server

    t_start = time.perf_counter()
    log_dir = Path(tempfile.mkdtemp(prefix="voxline-voice-turn-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server
    os.environ.setdefault("VOXLINE_METRICS_PUBLIC", "1")  # our own server: read its speculation counter at the end
    server = Server(args.url, None, log_dir)
    print(f"[voice_turn] server {server.base} (pid {server.pid}, log {log_dir}/server.log); loading this "
          "process's models (clips" + ("" if args.no_peer else ", naive cascade") + ")…", flush=True)
    sets = ["main", "pause"] if args.set == "both" else [args.set]
    results: dict[str, dict] = {}
    rows: list[TurnResult] = []
    hub = None
    try:
        hub = ModelHub(Settings.from_env())
        tts = hub.tts()
        clips = {s: build_clips(tts, s, args.turns) for s in sets}
        warmup = build_clips(tts, "main", 1, offset=len(QUESTIONS) * len(VOICES) - 1)[0]
        if not args.no_peer:
            hub.asr(), hub.llm()
        for s in sets:
            speech = [c.speech_s for c in clips[s]]
            print(f"[voice_turn] {s}: {len(clips[s])} clips, speech {np.mean(speech):.1f} s on average"
                  + (f", pauses {sorted({c.pause_ms for c in clips[s]})} ms" if s == "pause" else ""), flush=True)
        server.wait_ready()
        print(f"[voice_turn] ready after {time.perf_counter() - t_start:.0f} s; {args.sessions} session(s), "
              f"turn detection: {turn_detection or 'server default'}", flush=True)
        progress = Progress(sum(len(c) for c in clips.values()) * (1 if args.no_peer else 2))
        for s in sets:
            got, voices = asyncio.run(run_set(s, clips[s], warmup, server.ws, session,
                                              None if args.no_peer else hub, args, progress))
            rows += got
            results[f"{s}/stream"] = summarize([r for r in got if r.pipeline == "stream"], voices)
            if not args.no_peer:
                results[f"{s}/cascade"] = summarize([r for r in got if r.pipeline == "cascade"], None)
        speculations = speculation_counts(server.base)
    finally:
        server.stop()
        if hub is not None:
            hub.close()
    print()
    print(table(results, args.sessions))
    print()
    for line in goals(results, args.sessions):
        print("  " + line)
    if speculations is not None:
        print(f"  speculative responses (server counter, warm-up turns included): {speculations.get('committed', 0):.0f} "
              f"committed, {speculations.get('dropped', 0):.0f} dropped")
    wall = time.perf_counter() - t_start
    print(f"\n[voice_turn] {today()}, {machine()}; wall {wall / 60:.1f} min; command: "
          f"python -m bench.voice_turn {' '.join(argv)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "date": today(), "machine": machine(), "args": argv, "sessions": args.sessions,
            "turn_detection": turn_detection or "server default", "asr_model": hub.settings.asr_model,
            "llm": llm_description(None if args.no_peer else hub.llm()), "wall_s": round(wall, 1),
            "goals": GOALS, "summary": results, "speculations": speculations, "goal_lines": goals(results, args.sessions),
            "turns": [asdict(r) for r in rows]}, indent=1, ensure_ascii=False))
        print(f"[voice_turn] wrote {args.out}")
    return 0


def speculation_counts(base: str) -> dict[str, float] | None:
    """`voxline_realtime_speculations_total` by outcome from the server's /metrics; None where it is not readable
    (a server started elsewhere that keeps /metrics behind a key)."""
    import httpx

    try:
        reply = httpx.get(base + "/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        return None
    counts: dict[str, float] = {}
    for line in reply.text.splitlines():
        if line.startswith("voxline_realtime_speculations_total{"):
            labels, value = line.rsplit(" ", 1)
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = counts.get(outcome, 0.0) + float(value)
    return counts


if __name__ == "__main__":
    raise SystemExit(main())
