"""Audio between WebRTC tracks and a realtime session.

- `MicInput` turns the browser's decoded frames (Opus → 48 kHz s16, usually stereo) into bytes in the
  session's input format (pcm16 24 kHz by default; μ-law / A-law 8 kHz if the client asked for them), with a
  streaming resampler that keeps its filter state from frame to frame.
- `SpeakerTrack` is the outbound track: a queue of 48 kHz PCM tagged with the response it belongs to, read
  by aiortc's RTP sender one 20 ms frame at a time. Frames carry their own clock (`pts` in samples,
  `time_base` 1/48000) and are paced against a start time, not by fixed sleeps; silence fills the gaps, so the
  browser's jitter buffer never starves. `clear()` drops everything queued at once (barge-in) and says how
  much of each response was played, which is what the assistant item is truncated to.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from realtime.audio import AudioFormat, StreamResampler, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

log = logging.getLogger(__name__)
RATE = 48000  # Opus's clock, and the rate of every frame we send
FRAME = 960  # 20 ms
TIME_BASE = fractions.Fraction(1, RATE)
MAX_LAG_S = 0.2  # a sender this far behind its clock (a stalled loop) re-anchors instead of bursting
MAX_QUEUED_S = 120.0  # the pipeline paces audio (≈0.5 s ahead); this only bounds a misbehaving producer


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded audio frame (s16 or float, packed or planar, any channel count) → float32 mono."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:  # [channels, samples]
        audio = data.reshape(channels, -1).astype(np.float32)
        mono = audio.mean(axis=0)
    else:  # [1, samples * channels], interleaved
        mono = data.reshape(-1, channels).astype(np.float32).mean(axis=1)
    if np.issubdtype(data.dtype, np.integer):
        mono /= float(np.iinfo(data.dtype).max + 1)
    return mono


def encode_pcm(audio: np.ndarray, fmt: AudioFormat) -> bytes:
    """float32 samples at `fmt.rate` → wire bytes in `fmt`."""
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    if fmt.codec == "pcm16":
        return pcm.astype("<i2").tobytes()
    return ulaw_encode(pcm) if fmt.codec == "pcmu" else alaw_encode(pcm)


def decode_pcm(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """Wire bytes in `fmt` → int16 samples at `fmt.rate`."""
    if fmt.codec == "pcm16":
        return np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.int16)
    return ulaw_decode(data) if fmt.codec == "pcmu" else alaw_decode(data)


class MicInput:
    """Inbound frames → session input bytes. Follows the session's input format if it changes."""

    def __init__(self) -> None:
        self._key: tuple[int, AudioFormat] | None = None
        self._resampler: StreamResampler | None = None
        self.frames = 0
        self.samples = 0  # at the frames' own rate

    def __call__(self, frame: av.AudioFrame, fmt: AudioFormat) -> bytes:
        key = (frame.sample_rate, fmt)
        if key != self._key:
            self._key, self._resampler = key, StreamResampler(frame.sample_rate, fmt.rate)
        mono = frame_to_mono(frame)
        self.frames += 1
        self.samples += len(mono)
        out = self._resampler(mono)  # type: ignore[misc]
        return encode_pcm(out, fmt) if len(out) else b""


class SpeakerTrack(MediaStreamTrack):
    """The assistant's voice. `push(response_id, pcm48)` queues audio; `recv()` plays it in real time.

    `on_event(kind, response_id)` is called with "started" when a response's first sample is sent and
    "stopped" when its last one is (after `finish(response_id)`), as OpenAI's `output_audio_buffer.started`
    / `.stopped` report them."""

    kind = "audio"

    def __init__(self, on_event: Callable[[str, str], None] | None = None):
        super().__init__()
        self._queue: deque[tuple[str, np.ndarray]] = deque()  # (response id, int16 @ 48 kHz)
        self._queued = 0
        self._finished: set[str] = set()  # responses whose audio is complete
        self._playing: str | None = None
        self._start: float | None = None
        self._pts = 0
        self.played: dict[str, int] = {}  # samples of each response sent so far
        self.frames_sent = 0
        self.voiced_frames = 0  # frames that carried response audio
        self._on_event = on_event

    # ---- producer side -------------------------------------------------------------------------------
    def push(self, response_id: str, pcm: np.ndarray) -> None:
        if len(pcm) and self.readyState == "live":
            if self._queued > MAX_QUEUED_S * RATE:
                log.warning("speaker queue full (%.0f s): dropping audio of %s", self._queued / RATE, response_id)
                return
            self._queue.append((response_id, np.asarray(pcm, np.int16)))
            self._queued += len(pcm)

    def finish(self, response_id: str) -> None:
        """No more audio will come for `response_id`."""
        if self._playing != response_id and all(rid != response_id for rid, _ in self._queue):
            return  # nothing of it is playing or queued (a text answer, or audio already cleared)
        self._finished.add(response_id)
        if self._playing == response_id and not self._queued:
            self._stopped()

    @property
    def queued_ms(self) -> float:
        return self._queued * 1000 / RATE

    def clear(self) -> dict[str, float]:
        """Drop all queued audio now. Returns {response id: ms of it already played} for every response that
        lost audio (what the listener heard of it)."""
        lost = {rid: self.played.get(rid, 0) * 1000 / RATE for rid, _ in self._queue}
        self._queue.clear()
        self._queued = 0
        if self._playing is not None:
            lost.setdefault(self._playing, self.played.get(self._playing, 0) * 1000 / RATE)
            self._playing = None  # cleared, not stopped: the caller reports output_audio_buffer.cleared
        for rid in lost:
            self.played.pop(rid, None)
            self._finished.discard(rid)
        return lost

    # ---- consumer side (aiortc's RTP sender) ----------------------------------------------------------
    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -MAX_LAG_S:
                self._start = loop.time() - self._pts / RATE
        if self.readyState != "live":
            raise MediaStreamError
        pcm = self._take(FRAME)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, TIME_BASE
        self.frames_sent += 1
        return frame

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._queue:
            rid, chunk = self._queue[0]
            if rid != self._playing:
                if self._playing is not None and self._playing in self._finished:
                    self._stopped()
                self._playing = rid
                self._emit("started", rid)
            take = min(n - filled, len(chunk))
            out[filled:filled + take] = chunk[:take]
            filled += take
            self.played[rid] = self.played.get(rid, 0) + take
            if take == len(chunk):
                self._queue.popleft()
            else:
                self._queue[0] = (rid, chunk[take:])
        self._queued -= filled
        if filled:
            self.voiced_frames += 1
        elif self._playing is not None and self._playing in self._finished:
            self._stopped()
        return out

    def _stopped(self) -> None:
        rid, self._playing = self._playing, None
        if rid is not None:
            self._finished.discard(rid)
            self.played.pop(rid, None)
            self._emit("stopped", rid)

    def _emit(self, kind: str, response_id: str) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, response_id)
            except Exception:
                log.exception("speaker event handler failed")
