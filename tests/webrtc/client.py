"""A WebRTC client for the tests, built on aiortc like a browser page is on its WebRTC stack: a microphone
track that plays queued speech in real time (silence otherwise), a listener that records every frame of the
assistant's track with its arrival time and energy, and the `oai-events` data channel."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from audio_server.webrtc_peer import offered_addresses
from audio_server.webrtc_tracks import frame_to_mono
from realtime.audio import StreamResampler

RATE, FRAME = 48000, 960


def to48k(audio: np.ndarray, rate: int) -> np.ndarray:
    """float32 or int16 mono at `rate` → int16 at 48 kHz."""
    audio = np.asarray(audio)
    if audio.dtype != np.int16:
        audio = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
    return StreamResampler(rate, RATE, dtype="int16")(audio, last=True)


class MicTrack(MediaStreamTrack):
    """Plays queued int16 48 kHz audio in real time, 20 ms frames; silence when there is none."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.queue = np.zeros(0, np.int16)
        self.start: float | None = None
        self.pts = 0
        self.speech_started_at: list[float] = []  # when each play() began to go out
        self._mark = False

    def play(self, pcm48: np.ndarray) -> None:
        self.queue = np.concatenate([self.queue, np.asarray(pcm48, np.int16)])
        self._mark = True

    @property
    def idle(self) -> bool:
        return len(self.queue) == 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.perf_counter()
        else:
            self.pts += FRAME
            wait = self.start + self.pts / RATE - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        chunk, self.queue = self.queue[:FRAME], self.queue[FRAME:]
        if len(chunk) and self._mark:
            self._mark = False
            self.speech_started_at.append(time.perf_counter())
        pcm = np.zeros(FRAME, np.int16)
        pcm[: len(chunk)] = chunk
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.pts, fractions.Fraction(1, RATE)
        return frame


@dataclass
class Heard:
    t: float  # arrival (perf_counter)
    rms: float  # of the frame, full scale = 1
    pcm: np.ndarray  # float32 mono at `rate`
    rate: int


class Client:
    def __init__(self, json_body: bool = False):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicTrack()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict] = []
        self.event_times: list[float] = []
        self.heard: list[Heard] = []
        self.opened = asyncio.Event()
        self.json_body = json_body
        self.call_id: str | None = None
        self._tasks: list[asyncio.Task] = []
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    def _on_message(self, text) -> None:
        self.events.append(json.loads(text))
        self.event_times.append(time.perf_counter())

    def _on_track(self, track) -> None:
        self._tasks.append(asyncio.ensure_future(self._listen(track)))

    async def _listen(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            mono = frame_to_mono(frame)
            self.heard.append(Heard(time.perf_counter(), float(np.sqrt(np.mean(mono ** 2))) if len(mono) else 0.0,
                                    mono, frame.sample_rate))

    async def offer(self) -> str:
        with offered_addresses(("127.0.0.1",)):  # loopback only, like the server
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def connect(self, base_url: str, path: str = "/v1/realtime/webrtc", headers: dict | None = None,
                      timeout: float = 60.0) -> httpx.Response:
        sdp = await self.offer()
        async with httpx.AsyncClient(timeout=timeout) as http:
            if self.json_body:
                r = await http.post(base_url + path, json={"sdp": sdp, "type": "offer"}, headers=headers)
            else:
                r = await http.post(base_url + path, content=sdp,
                                    headers={"Content-Type": "application/sdp", **(headers or {})})
        if r.status_code in (200, 201):
            answer = r.json()["sdp"] if self.json_body else r.text
            self.call_id = r.headers["location"].rsplit("/", 1)[-1]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await asyncio.wait_for(self.opened.wait(), timeout)
        return r

    def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    def of(self, type: str, after: int = 0) -> list[tuple[int, dict]]:
        return [(i, e) for i, e in enumerate(self.events) if e["type"] == type and i >= after]

    def wait_index(self, type: str, after: int = 0) -> int:
        found = self.of(type, after)
        assert found, f"no {type!r} after event {after}: {[e['type'] for e in self.events[after:]]}"
        return found[0][0]

    async def wait(self, type: str, after: int = 0, timeout: float = 60.0, where=None) -> int:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for i, e in self.of(type, after):
                if where is None or where(e):
                    return i
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {type!r} after event {after} within {timeout:.0f} s; got "
                             f"{[e['type'] for e in self.events[after:]]}")

    def audio_since(self, t0: float) -> tuple[np.ndarray, int]:
        frames = [h for h in self.heard if h.t >= t0]
        if not frames:
            return np.zeros(0, np.float32), RATE
        return np.concatenate([h.pcm for h in frames]), frames[0].rate

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()

    def vanish(self) -> None:
        """Drop off the network without a goodbye: close the UDP sockets under ICE (no DTLS close_notify,
        no SCTP abort); the server must notice by itself."""
        transports = {t.receiver.transport.transport for t in self.pc.getTransceivers()}
        if self.pc.sctp is not None:
            transports.add(self.pc.sctp.transport.transport)
        for ice in transports:
            for protocol in list(ice._connection._protocols):
                if protocol.transport is not None:
                    protocol.transport.close()
        self.mic.stop()
