"""Load and soak test of `/v1/realtime`: N concurrent voice sessions, real speech, real time, M minutes.

Each session is a client on loopback that behaves like a microphone: it streams recordings from
`tests/data` (LibriVox and command clips, 24 kHz pcm16) in 20 ms frames paced in real time, keeps sending
silence while the assistant answers (server VAD ends each turn, `create_response`), and starts its next
utterance once the answer is done — turn after turn until the time is up. The server runs the embedded
preset in its own process (started here, or `--url` of one already running on loopback), so its memory can
be sampled from /proc and the clients do not compete with it for the GIL.

Recorded per run (and per session):
- turn latency: end of user speech (last audible frame sent) → first `response.output_audio.delta`
  received, p50/p95/p99;
- errors: `error` events by code, failed transcriptions and responses, unexpected socket closes;
- lost events: a committed utterance without `conversation.item.input_audio_transcription.completed`,
  a `response.created` without `response.done` (checked after a grace period at the end);
- duplicated events: a repeated `event_id`, or two `response.done` / transcripts for one id;
- real time: input — how late each 20 ms frame went out against its schedule (a server that stops reading
  backs the socket up) and the VAD lag (`speech_stopped` arrival − when that audio was sent − the longest silence
  the session's turn detection waits for: 500 ms for server_vad, the eagerness's longest wait for semantic_vad,
  read from `session.created`); output — stalls of a simulated player fed the audio deltas as they arrive. A session
  is real-time when input lag p99 < 0.2 s, VAD lag p95 < 0.5 s and stalls < 5 % of the audio it played;
- server RSS every few seconds (/proc/<pid>/status) and its growth after the warm-up.

`--sweep` runs N = 1, 2, 3, … (each `--sweep-minutes`) and reports the largest N at which every session
stayed real-time. Loopback only. Examples:

    .venv/bin/python -m bench.load --sessions 1 --minutes 0.5            # smoke
    .venv/bin/python -m bench.load --sweep --max-sessions 6 --out artifacts/load-sweep
    .venv/bin/python -m bench.load --sessions 3 --minutes 10 --out artifacts/load-soak
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from bench.common import ROOT, machine, pct, read, today, transcripts

RATE = 24000
FRAME_S = 0.02
FRAME = int(RATE * FRAME_S)
SILENCE_MS = 500  # server_vad default; part of the VAD lag until session.created names the session's own
INSTRUCTIONS = "You are a voice assistant. Reply with one short sentence."
MAX_TOKENS = 40
TURN_TIMEOUT_S = 60.0  # a turn whose answer has not ended by then is counted as stuck and abandoned
GAP_S = 0.6  # silence between the end of an answer and the next utterance
LIMITS = {"input_lag_p99_s": 0.2, "vad_lag_p95_s": 0.5, "stall_ratio": 0.05}


# ---- speech ----------------------------------------------------------------------------------------------
@dataclass
class Clip:
    name: str
    pcm: bytes  # int16 LE at 24 kHz
    speech_end_frame: int  # frames up to and including the last audible one


def load_clips(max_seconds: float = 8.0) -> list[Clip]:
    from realtime.audio import StreamResampler

    clips = []
    for path, _ref in transcripts():
        audio = read(path)
        if len(audio) / 16000 > max_seconds:
            continue
        pcm = StreamResampler(16000, RATE, dtype="int16")((np.clip(audio, -1, 1) * 32767).astype(np.int16), last=True)
        pcm = pcm[: len(pcm) // FRAME * FRAME]
        frames = pcm.reshape(-1, FRAME).astype(np.float32)
        rms = np.sqrt((frames ** 2).mean(axis=1))
        loud = np.nonzero(rms > 0.1 * rms.max())[0]
        clips.append(Clip(path.stem, pcm.astype("<i2").tobytes(), int(loud[-1]) + 1))
    return clips


# ---- one session ---------------------------------------------------------------------------------------
@dataclass
class Turn:
    clip: str
    speech_end: float  # wall time the last audible frame was sent
    response_id: str | None = None
    stopped: float | None = None  # speech_stopped received
    transcript: float | None = None  # its transcription completed
    first_text: float | None = None  # the answer's first transcript delta (the LLM's first words)
    first_audio: float | None = None
    done: float | None = None
    status: str | None = None

    @property
    def latency(self) -> float | None:
        return self.since_end("first_audio")

    def since_end(self, name: str) -> float | None:
        t = getattr(self, name)
        return None if t is None else t - self.speech_end


@dataclass
class SessionStats:
    index: int
    turns: list[Turn] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    lost_transcripts: int = 0
    lost_responses: int = 0
    duplicates: int = 0
    input_lags: list[float] = field(default_factory=list)
    vad_lags: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    stall_s: float = 0.0
    #: (seconds of the response already received when its player ran dry, length of the gap)
    stalls: list[tuple[float, float]] = field(default_factory=list)
    closed_early: str | None = None

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def summary(self) -> dict:
        lat = [t.latency for t in self.turns if t.latency is not None]
        out = {
            "session": self.index, "turns": len(self.turns), "answered": len(lat),
            "latency_p50_s": _p(lat, 50), "latency_p95_s": _p(lat, 95), "latency_p99_s": _p(lat, 99),
            "errors": sum(self.errors.values()), "error_codes": self.errors,
            "lost_transcripts": self.lost_transcripts, "lost_responses": self.lost_responses,
            "duplicates": self.duplicates, "input_lag_p99_s": _p(self.input_lags, 99),
            "input_lag_max_s": max(self.input_lags, default=None), "vad_lag_p95_s": _p(self.vad_lags, 95),
            "audio_s": round(self.audio_s, 2), "stall_s": round(self.stall_s, 3),
            "stall_ratio": round(self.stall_s / self.audio_s, 4) if self.audio_s else None,
            "stalls": len(self.stalls),
            # share of the stall time that fell in a response's first 3 s (first chunk → next chunk)
            "stall_share_first_3s": round(sum(g for at, g in self.stalls if at < 3.0) / self.stall_s, 3)
            if self.stall_s else None,
            "stall_gap_p50_s": _p([g for _, g in self.stalls], 50),
            "closed_early": self.closed_early,
        }
        out["realtime"] = bool(
            out["answered"] and (out["input_lag_p99_s"] or 0) < LIMITS["input_lag_p99_s"]
            and (out["vad_lag_p95_s"] or 0) < LIMITS["vad_lag_p95_s"]
            and (out["stall_ratio"] or 0) < LIMITS["stall_ratio"] and not self.closed_early)
        return out


def longest_turn_silence_s(session: dict) -> float:
    """The longest silence the session's turn detection waits before it ends a turn (a `session` object of the GA
    or the beta protocol): a `speech_stopped` that long after the speech is on time."""
    from realtime.config import SEMANTIC_EAGERNESS

    td = ((session.get("audio") or {}).get("input") or {}).get("turn_detection") or session.get("turn_detection") or {}
    if td.get("type") == "semantic_vad":
        return SEMANTIC_EAGERNESS[td.get("eagerness") or "auto"].max_silence_ms / 1000
    return (td.get("silence_duration_ms") or SILENCE_MS) / 1000


def _p(values: list[float], q: float) -> float | None:
    return round(pct(values, q), 3) if values else None


class VoiceSession:
    """One simulated caller: a paced microphone and a reader of everything the server sends."""

    def __init__(self, index: int, ws_url: str, clips: list[Clip], until: float):
        self.stats = SessionStats(index)
        self.ws_url, self.clips, self.until = ws_url, clips, until
        self.sent_at: list[float] = []  # wall time each 20 ms frame went out
        self.event_ids: set[str] = set()
        self.created: set[str] = set()
        self.done: set[str] = set()
        self.committed: set[str] = set()
        self.transcribed: set[str] = set()
        self.turn: Turn | None = None
        self.player_end: dict[str, float] = {}  # response id → when its queued audio runs out
        self.received: dict[str, float] = {}  # response id → seconds of its audio received so far
        self.response_done = asyncio.Event()
        self.t0 = 0.0  # loop time of the first frame

    async def run(self) -> SessionStats:
        import websockets

        try:
            self.ws = await websockets.connect(self.ws_url + "/v1/realtime?model=gpt-realtime", max_size=None,
                                               open_timeout=60)
        except Exception as exc:
            self.stats.closed_early = f"connect failed: {type(exc).__name__}: {exc}"
            return self.stats
        reader = asyncio.create_task(self._read())
        await self.ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": INSTRUCTIONS, "max_output_tokens": MAX_TOKENS}}))
        try:
            await self._microphone()
            await self._grace(reader)
        except Exception as exc:  # the connection went away under us
            self.stats.closed_early = self.stats.closed_early or f"{type(exc).__name__}: {exc}"
        finally:
            reader.cancel()
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except Exception:
                pass
        self._account()
        return self.stats

    async def _microphone(self) -> None:
        loop = asyncio.get_running_loop()
        silence = bytes(FRAME * 2)
        self.t0 = loop.time()
        clip_no = self.stats.index  # sessions start at different clips
        while True:
            if self.turn is None or self.turn.done is not None or self.turn_stuck():
                if loop.time() >= self.until or self.stats.closed_early:
                    return
                if self.turn is not None:  # a pause after the answer, then speak again
                    await self._send_frames([silence] * int(GAP_S / FRAME_S))
                clip = self.clips[clip_no % len(self.clips)]
                clip_no += 1
                frames = [clip.pcm[i:i + FRAME * 2] for i in range(0, len(clip.pcm), FRAME * 2)]
                self.response_done.clear()
                await self._send_frames(frames[:clip.speech_end_frame])
                self.turn = Turn(clip.name, time.perf_counter())
                self.stats.turns.append(self.turn)
                await self._send_frames(frames[clip.speech_end_frame:])
            else:
                await self._send_frames([silence])  # the microphone stays open while the answer plays

    def turn_stuck(self) -> bool:
        if self.turn is not None and time.perf_counter() - self.turn.speech_end > TURN_TIMEOUT_S:
            self.stats.error("turn_timeout")
            self.turn.done = time.perf_counter()
            return True
        return False

    async def _send_frames(self, frames: list[bytes]) -> None:
        """Frames on the session's 20 ms grid (frame k is due at t0 + k·20 ms); lateness is input lag."""
        loop = asyncio.get_running_loop()
        for frame in frames:
            due = self.t0 + len(self.sent_at) * FRAME_S
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.ws.send(json.dumps({"type": "input_audio_buffer.append",
                                           "audio": base64.b64encode(frame).decode()}))
            now = loop.time()
            self.stats.input_lags.append(max(0.0, now - due))
            self.sent_at.append(time.perf_counter())

    silence_s = SILENCE_MS / 1000

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self._on_event(json.loads(message), time.perf_counter())
        except Exception as exc:
            if self.stats.closed_early is None and asyncio.get_running_loop().time() < self.until:
                self.stats.closed_early = f"connection closed: {exc}"

    def _on_event(self, ev: dict, now: float) -> None:
        kind, s = ev.get("type"), self.stats
        eid = ev.get("event_id")
        if eid in self.event_ids:
            s.duplicates += 1
        self.event_ids.add(eid)
        if kind == "error":
            s.error(str((ev.get("error") or {}).get("code")))
        elif kind in ("session.created", "session.updated"):
            self.silence_s = longest_turn_silence_s((ev.get("session") or {}))
        elif kind == "input_audio_buffer.speech_stopped":
            if self.turn is not None and self.turn.stopped is None and now >= self.turn.speech_end:
                self.turn.stopped = now
            frame = int(ev["audio_end_ms"] / 1000 / FRAME_S)
            if frame < len(self.sent_at):
                s.vad_lags.append(max(0.0, now - self.sent_at[frame] - self.silence_s))
        elif kind == "input_audio_buffer.committed":
            self.committed.add(ev["item_id"])
        elif kind == "conversation.item.input_audio_transcription.completed":
            if ev["item_id"] in self.transcribed:
                s.duplicates += 1
            self.transcribed.add(ev["item_id"])
            if self.turn is not None and self.turn.transcript is None and self.turn.stopped is not None:
                self.turn.transcript = now
        elif kind == "conversation.item.input_audio_transcription.failed":
            s.error("transcription_failed")
            self.transcribed.add(ev["item_id"])
        elif kind == "response.created":
            rid = ev["response"]["id"]
            if rid in self.created:
                s.duplicates += 1
            self.created.add(rid)
            if self.turn is not None and self.turn.response_id is None and now >= self.turn.speech_end:
                self.turn.response_id = rid
        elif kind == "response.output_audio_transcript.delta":
            if self.turn is not None and self.turn.response_id == ev["response_id"] and self.turn.first_text is None:
                self.turn.first_text = now
        elif kind == "response.output_audio.delta":
            rid = ev["response_id"]
            seconds = len(base64.b64decode(ev["delta"])) / 2 / RATE
            s.audio_s += seconds
            end = self.player_end.get(rid)
            if end is None or now > end:  # first audio, or the player ran dry: a stall
                if end is not None:
                    s.stall_s += now - end
                    s.stalls.append((self.received.get(rid, 0.0), now - end))
                end = now
            self.player_end[rid] = end + seconds
            self.received[rid] = self.received.get(rid, 0.0) + seconds
            if self.turn is not None and self.turn.response_id == rid and self.turn.first_audio is None:
                self.turn.first_audio = now
        elif kind == "response.done":
            response = ev["response"]
            rid = response["id"]
            if rid in self.done:
                s.duplicates += 1
            self.done.add(rid)
            if response["status"] == "failed":
                s.error("response_failed")
            if self.turn is not None and self.turn.response_id == rid:
                self.turn.done, self.turn.status = now, response["status"]
                self.response_done.set()

    async def _grace(self, reader: asyncio.Task, seconds: float = 30.0) -> None:
        """Keep the microphone quiet-but-open until every response and transcript is in, or `seconds`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end and not reader.done():
            if self.created <= self.done and self.committed <= self.transcribed:
                break
            await self._send_frames([bytes(FRAME * 2)])

    def _account(self) -> None:
        self.stats.lost_responses = len(self.created - self.done)
        self.stats.lost_transcripts = len(self.committed - self.transcribed)


# ---- the server ---------------------------------------------------------------------------------------
class Server:
    """The service in its own process (embedded preset), or one already running on loopback (`--url`)."""

    def __init__(self, url: str | None, asr_model: str | None, log_dir: Path):
        self.proc: subprocess.Popen | None = None
        if url:
            host = urlsplit(url).hostname
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise SystemExit(f"--url must be a loopback address (got {host}); this harness only loads loopback")
            self.base = url.rstrip("/")
            self.pid = pid_listening_on(urlsplit(url).port or 80)
            return
        from audio_server.live import free_port

        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        if asr_model:
            env["VOXLINE_ASR_MODEL"] = asr_model
        self.log_path = log_dir / "server.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "audio_server.cli", "serve", "--host", "127.0.0.1",
                                      "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    @property
    def ws(self) -> str:
        return "ws" + self.base[4:]

    def wait_ready(self, timeout: float = 600.0) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit("the server did not become ready")

    def rss_mb(self) -> float | None:
        if self.pid is None:
            return None
        try:
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: the graceful drain
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()


def pid_listening_on(port: int) -> int | None:
    """The pid of the process listening on a loopback TCP port (Linux /proc), to sample its memory."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in open(table).readlines()[1:]:
                parts = line.split()
                if int(parts[1].split(":")[1], 16) == port and parts[3] == "0A":  # LISTEN
                    inodes.add(parts[9])
        except OSError:
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


# ---- a run ---------------------------------------------------------------------------------------------
async def run_load(server: Server, clips: list[Clip], sessions: int, minutes: float, rss_every: float) -> dict:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    until = t0 + minutes * 60
    rss: list[tuple[float, float]] = []

    async def sample() -> None:
        while True:
            value = server.rss_mb()
            if value is not None:
                rss.append((round(loop.time() - t0, 1), round(value, 1)))
            await asyncio.sleep(rss_every)

    sampler = asyncio.create_task(sample())
    voices = [VoiceSession(i, server.ws, clips, until) for i in range(sessions)]

    async def staggered(i: int, voice: VoiceSession) -> SessionStats:
        await asyncio.sleep(0.37 * i)  # callers do not all start in the same instant
        return await voice.run()

    stats = await asyncio.gather(*(staggered(i, v) for i, v in enumerate(voices)))
    sampler.cancel()
    wall = loop.time() - t0
    return summarize(sessions, minutes, [s.summary() for s in stats], [t for s in stats for t in s.turns], rss, wall)


def summarize(sessions: int, minutes: float, per_session: list[dict], turns: list[Turn],
              rss: list[tuple[float, float]], wall: float) -> dict:
    lat = [t.latency for t in turns if t.latency is not None]
    warm = min(60.0, 0.25 * minutes * 60)
    after = [(t, v) for t, v in rss if t >= warm]
    growth = slope = None
    if len(after) >= 2:
        growth = round(after[-1][1] - after[0][1], 1)
        ts, vs = np.array([t for t, _ in after]), np.array([v for _, v in after])
        slope = round(float(np.polyfit(ts, vs, 1)[0]) * 60, 2) if np.ptp(ts) > 0 else None
    breakdown = {f"to_{name}_p50_s": _p([v for t in turns if (v := t.since_end(name)) is not None], 50)
                 for name in ("stopped", "transcript", "first_text", "first_audio")}
    return {
        "sessions": sessions, "minutes": minutes, "wall_s": round(wall, 1), "turns": len(turns),
        "answered": len(lat), "latency_p50_s": _p(lat, 50), "latency_p95_s": _p(lat, 95),
        "latency_p99_s": _p(lat, 99), **breakdown,
        "errors": sum(s["errors"] for s in per_session),
        "lost_transcripts": sum(s["lost_transcripts"] for s in per_session),
        "lost_responses": sum(s["lost_responses"] for s in per_session),
        "duplicates": sum(s["duplicates"] for s in per_session),
        "all_realtime": all(s["realtime"] for s in per_session),
        "rss_start_mb": rss[0][1] if rss else None, "rss_end_mb": rss[-1][1] if rss else None,
        "rss_max_mb": max((v for _, v in rss), default=None), "rss_warmup_s": warm,
        "rss_growth_after_warmup_mb": growth, "rss_slope_mb_per_min": slope,
        "per_session": per_session, "rss": rss,
    }


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


def table(results: list[dict]) -> str:
    head = ("| sessions | min | turns | answered | latency p50 | p95 | p99 | errors | lost (transcripts / responses) "
            "| dup | all real-time | RSS start → end (max) MB | growth after warm-up |")
    rows = [head, "|" + "---|" * 13]
    for r in results:
        rows.append(
            f"| {r['sessions']} | {r['minutes']:g} | {r['turns']} | {r['answered']} | {_fmt(r['latency_p50_s'], ' s')} | "
            f"{_fmt(r['latency_p95_s'], ' s')} | {_fmt(r['latency_p99_s'], ' s')} | {r['errors']} | "
            f"{r['lost_transcripts']} / {r['lost_responses']} | {r['duplicates']} | {'yes' if r['all_realtime'] else 'NO'} | "
            f"{_fmt(r['rss_start_mb'])} → {_fmt(r['rss_end_mb'])} ({_fmt(r['rss_max_mb'])}) | "
            f"{_fmt(r['rss_growth_after_warmup_mb'], ' MB')} ({_fmt(r['rss_slope_mb_per_min'], ' MB/min')}) |")
    return "\n".join(rows)


def session_table(result: dict) -> str:
    rows = ["| session | turns | answered | latency p50 / p95 | input lag p99 | VAD lag p95 | stalls / audio | "
            "stalls (gap p50; share in a response's first 3 s) | errors | real-time |", "|" + "---|" * 10]
    for s in result["per_session"]:
        rows.append(f"| {s['session']} | {s['turns']} | {s['answered']} | {_fmt(s['latency_p50_s'])} / "
                    f"{_fmt(s['latency_p95_s'])} s | {_fmt(s['input_lag_p99_s'], ' s')} | {_fmt(s['vad_lag_p95_s'], ' s')} | "
                    f"{s['stall_s']:.2f} / {s['audio_s']:.1f} s | {s.get('stalls', 0)} "
                    f"({_fmt(s.get('stall_gap_p50_s'), ' s')}; {_fmt(s.get('stall_share_first_3s'))}) | "
                    f"{s['errors']} {s['error_codes'] or ''} | "
                    f"{'yes' if s['realtime'] else 'NO'}{' (' + s['closed_early'] + ')' if s['closed_early'] else ''} |")
    return "\n".join(rows)


def markdown(results: list[dict], args, sweep_best: int | None) -> str:
    out = ["## Realtime load and soak (`bench/load.py`)", "",
           f"Date {today()}; machine: {machine()}. Embedded preset in its own process; N concurrent "
           "`/v1/realtime` sessions on loopback, each streaming tests/data recordings in real time (20 ms frames), "
           "server VAD, turn after turn. Latency = end of user speech → first response audio received. "
           f"Real-time = input lag p99 < {LIMITS['input_lag_p99_s']} s, VAD lag p95 < {LIMITS['vad_lag_p95_s']} s, "
           f"playback stalls < {LIMITS['stall_ratio']:.0%} of the audio.", "", table(results), ""]
    if sweep_best is not None:
        out += [f"Largest N with every session real-time: **{sweep_best}**.", ""]
    for r in results:
        out += [f"Sessions at N={r['sessions']}:", "", session_table(r), ""]
    out += ["Where a turn's wait goes (p50 from the end of speech): "
            + "; ".join(f"N={r['sessions']}: speech_stopped {_fmt(r['to_stopped_p50_s'], ' s')}, transcript "
                        f"{_fmt(r['to_transcript_p50_s'], ' s')}, first answer text {_fmt(r['to_first_text_p50_s'], ' s')}, "
                        f"first audio {_fmt(r['to_first_audio_p50_s'], ' s')}" for r in results), ""]
    out.append(f"Command: `{' '.join(['python -m bench.load'] + args)}`")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server on loopback (default: start one, embedded preset)")
    ap.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    ap.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    ap.add_argument("--sweep", action="store_true", help="N = 1, 2, 3, … until a session stops being real-time")
    ap.add_argument("--max-sessions", type=int, default=8, help="sweep upper bound (default 8)")
    ap.add_argument("--sweep-minutes", type=float, default=1.0, help="minutes per sweep step (default 1)")
    ap.add_argument("--asr-model", help="ASR model of a server started here (e.g. whisper-tiny.en)")
    ap.add_argument("--rss-every", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument("--max-input-lag", type=float, default=LIMITS["input_lag_p99_s"],
                    help="real-time: input frame lag p99 below this (s)")
    ap.add_argument("--max-vad-lag", type=float, default=LIMITS["vad_lag_p95_s"],
                    help="real-time: VAD lag p95 below this (s)")
    ap.add_argument("--max-stall-ratio", type=float, default=LIMITS["stall_ratio"],
                    help="real-time: playback stalls below this fraction of the audio")
    ap.add_argument("--out", type=Path, help="write load.json and load.md here")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    LIMITS.update(input_lag_p99_s=args.max_input_lag, vad_lag_p95_s=args.max_vad_lag,
                  stall_ratio=args.max_stall_ratio)
    if not 1 <= args.sessions <= 64 or not 1 <= args.max_sessions <= 64:
        raise SystemExit("--sessions and --max-sessions must be between 1 and 64")
    if not 0.05 <= args.minutes <= 120 or not 0.05 <= args.sweep_minutes <= 60:
        raise SystemExit("--minutes must be between 0.05 and 120 (and --sweep-minutes up to 60)")
    clips = load_clips()
    log_dir = args.out or Path(tempfile.mkdtemp(prefix="voxline-load-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    server = Server(args.url, args.asr_model, log_dir)
    print(f"[bench.load] {len(clips)} clips; server {server.base} (pid {server.pid}); waiting until it is ready…",
          flush=True)
    results: list[dict] = []
    best = None
    try:
        server.wait_ready()
        steps = range(1, args.max_sessions + 1) if args.sweep else [args.sessions]
        for n in steps:
            minutes = args.sweep_minutes if args.sweep else args.minutes
            print(f"[bench.load] {n} session(s) for {minutes:g} min…", flush=True)
            result = asyncio.run(run_load(server, clips, n, minutes, args.rss_every))
            results.append(result)
            print(table([result]), flush=True)
            print(session_table(result), flush=True)
            print("p50 from end of speech: " + ", ".join(f"{k[3:-6]} {_fmt(result[k], ' s')}" for k in result
                                                         if k.startswith("to_")), flush=True)
            if args.sweep:
                if not result["all_realtime"]:
                    break
                best = n
    finally:
        server.stop()
    print()
    print(table(results))
    if args.sweep:
        print(f"\nlargest N with every session real-time: {best if best is not None else 'none (not even 1)'}")
    if args.out:
        (args.out / "load.json").write_text(json.dumps({"date": today(), "machine": machine(), "args": argv,
                                                        "limits": LIMITS, "sweep_best": best,
                                                        "results": results}, indent=1))
        (args.out / "load.md").write_text(markdown(results, argv, best) + "\n")
        print(f"[bench.load] wrote {args.out / 'load.json'} and {args.out / 'load.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
