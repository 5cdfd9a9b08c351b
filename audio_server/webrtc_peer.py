"""One browser call over WebRTC: an aiortc `RTCPeerConnection` driving the same `RealtimeHost` as
`/v1/realtime` (`routes_realtime.open_host`).

The edge translates, nothing more (`_out` is this wire's serializer):
- inbound audio track → `MicInput` → `host.append_audio` in the session's input format (its VAD, turns, ASR);
- the session's `AudioDelta`s → `SpeakerTrack` (paced 20 ms Opus frames), never the data channel; every
  other event → the `oai-events` data channel as Realtime JSON (GA, or beta names when the offer carried
  `OpenAI-Beta: realtime=v1`); client events on the channel → `host.client_event`, exactly as socket
  messages are;
- barge-in (`speech_started` with `interrupt_response`) clears the speaker's queue at once, reports
  `output_audio_buffer.cleared` and truncates the assistant item to what was played; the client event
  `output_audio_buffer.clear` does the same on request; `output_audio_buffer.started/stopped` follow playback.

Lifecycle: a peer lives in the app's registry (`peers(app)`) and holds a session slot (`ws_common`'s
limits) from the offer on. It closes — session tasks cancelled and awaited, tracks stopped, the connection
closed, the slot freed — when the connection fails or closes, when it never connects
(`webrtc_connect_timeout_s`), when a connected peer goes silent (`webrtc_idle_timeout_s`: no media, no
messages: the tab vanished), after `max_session_s` (an error event first), on hang-up, and at server
shutdown (`close_all`: the response in flight ends `cancelled` first). Every log line carries the peer id.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections import OrderedDict, deque
from contextlib import contextmanager

import aioice.ice
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from audio_server.routes_realtime import close_host, open_host
from audio_server.webrtc_config import host_addresses, parse_ice_servers
from audio_server.webrtc_tracks import RATE, MicInput, SpeakerTrack, decode_pcm
from realtime.audio import StreamResampler
from realtime.config import SessionConfig
from realtime.events import (
    AudioDelta,
    AudioDone,
    ErrorEvent,
    OutputAudioBuffer,
    ResponseDone,
    ServerEvent,
    SpeechStarted,
)
from realtime.items import new_id
from realtime.protocol import Dialect, ItemTruncate, JSONTextError, ProtocolError, Serializer, load_json
from realtime.tasks import TaskSet

log = logging.getLogger(__name__)
KIND = "webrtc"
CHANNEL = "oai-events"
MAX_PENDING_EVENTS = 512  # events held until the data channel opens (a client without one loses them)
WATCH_INTERVAL_S = 0.25
ENDED_MEMORY = 1024  # ids of ended calls remembered, so a late offer hears "ended" rather than "unknown"

# ---- which local addresses ICE offers ----------------------------------------------------------------------
# aioice always offers every interface except 127.0.0.1. A server on loopback should offer exactly loopback
# (and not reveal the LAN); this scoped override of aioice's address lookup does that for the gathering that
# runs inside `offered_addresses(...)` only, other connections in the process are untouched.
_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("ice_addresses", default=None)


def _install_address_override() -> None:
    original = aioice.ice.get_host_addresses
    if getattr(original, "voxline_override", False):
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _ADDRESSES.get()
        if chosen is None:
            return original(use_ipv4, use_ipv6)
        return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]

    get_host_addresses.voxline_override = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses


_install_address_override()


@contextmanager
def offered_addresses(addresses: tuple[str, ...] | None):
    """ICE candidates gathered inside this block use `addresses` (None: every interface)."""
    token = _ADDRESSES.set(tuple(addresses) if addresses is not None else None)
    try:
        yield
    finally:
        _ADDRESSES.reset(token)


def rtc_configuration(settings) -> RTCConfiguration:
    """No servers unless configured: aiortc's default would send STUN requests to a public server."""
    servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
               for s in parse_ice_servers(settings.ice_servers)]
    return RTCConfiguration(iceServers=servers)


def peers(app) -> dict[str, "WebRTCPeer"]:
    """The app's open WebRTC calls by id (for hang-up, tests and shutdown)."""
    registry = getattr(app.state, "webrtc_peers", None)
    if registry is None:
        registry = app.state.webrtc_peers = {}
    return registry


def ended_calls(app) -> OrderedDict:
    """Ids of recently ended calls (bounded) → the owner digest of each (`WebRTCPeer.owner`)."""
    ended = getattr(app.state, "webrtc_ended", None)
    if ended is None:
        ended = app.state.webrtc_ended = OrderedDict()
    return ended


async def close_all(app, reason: str = "server shutdown") -> None:
    await asyncio.gather(*(p.close(reason, "server_shutdown") for p in list(peers(app).values())),
                         return_exceptions=True)


def shorten_jitter_buffer(receiver, frames: int) -> None:
    """Hold ``frames`` 20 ms frames of inbound audio instead of aiortc's fixed 4 (80 ms).

    aiortc releases an audio frame only once 4 later frames have arrived, a constant 80 ms delay on
    every user utterance and barge-in; it has no setting for it, so the receiver's buffer (created
    empty with the receiver, before any packet) is swapped for a shorter one. If a future aiortc renames
    the attribute this leaves its default in place and says so, rather than failing the call.
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, name, None)
    if not isinstance(current, JitterBuffer) or getattr(current, "_origin", 0) is not None:
        log.warning("aiortc's audio jitter buffer was not found (or already in use): keeping its 80 ms default")
        return
    setattr(receiver, name, JitterBuffer(capacity=16, prefetch=frames))


class WebRTCPeer:
    """One call. Build it, `await answer(sdp)`, and it runs until `close()` (idempotent)."""

    def __init__(self, app, vad, config: SessionConfig, dialect: Dialect, slot, owner: str | None = None):
        self.app, self.slot, self.dialect = app, slot, dialect
        self.owner = owner  # a digest of the API key that made the call: only it may renegotiate or hang up
        self.settings, self.metrics = app.state.settings, app.state.metrics
        self.id = new_id("rtc")
        self.pc = RTCPeerConnection(rtc_configuration(self.settings))
        self.speaker = SpeakerTrack(on_event=self._playback_event)
        self.mic = MicInput()
        loop = asyncio.get_running_loop()

        def backlog(queued: int) -> None:
            self.request_close(f"{queued} events wait unread (max_queued_events)", "slow_consumer")

        session_id = new_id("sess")
        self._wire = Serializer(dialect, session_id)  # the data channel's Realtime JSON
        self.host = open_host(app, session_id, vad, config, self._out, backlog)
        self.session = self.host.session
        self.channel = None
        self.audio_out = False
        self._mic_task: asyncio.Task | None = None
        self._pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        # Client events in arrival order: data channel text, and the truncations the edge makes on barge-in.
        self._inbox: asyncio.Queue[str | ItemTruncate] = asyncio.Queue()
        self._resamplers: dict[str, StreamResampler] = {}
        self._items: dict[str, str] = {}  # response id → its assistant item id (for truncation)
        self._cleared: set[str] = set()
        self.tasks = TaskSet(f"webrtc:{self.id}", self.id)
        self.created = self.last_activity = loop.time()
        self.connected = False
        self.closed = False
        self.close_reason: str | None = None
        self._close_task: asyncio.Task | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    # ---- signalling ------------------------------------------------------------------------------------
    async def answer(self, sdp: str) -> str:
        """Take the offer, start the session, return the answer SDP (with every candidate: no trickle)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                shorten_jitter_buffer(transceiver.receiver, self.settings.webrtc_jitter_frames)
        if any(t.kind == "audio" for t in self.pc.getTransceivers()):
            self.pc.addTrack(self.speaker)
        sdp = await self._local_answer(start=True)
        # Audio goes out only if the negotiated direction lets us send (a recvonly or data-only offer does not
        # read the speaker track: its deltas are then dropped instead of piling up).
        self.audio_out = any(t.kind == "audio" and t.currentDirection in ("sendrecv", "sendonly")
                             for t in self.pc.getTransceivers())
        return sdp

    async def renegotiate(self, sdp: str) -> str:
        """A later offer on the same call (ICE restart, a track added)."""
        if self.pc.signalingState != "stable":
            raise ProtocolError(f"the call is in signaling state {self.pc.signalingState}", code="invalid_state")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        return await self._local_answer(start=False)

    async def _local_answer(self, start: bool) -> str:
        answer = await self.pc.createAnswer()
        with offered_addresses(host_addresses(self.settings.host, self.settings.ice_host_addresses)):
            await self.pc.setLocalDescription(answer)
        if start:
            await self.host.start()
            self.tasks.spawn(self._read(), "events")
            self.tasks.spawn(self._watch(), "watch")
            limit = self.settings.max_session_s
            self._expiry = asyncio.get_running_loop().call_later(
                limit, self.request_close, f"session expired: calls last at most {limit:g} s (max_session_s)",
                "session_expired")
        return self.pc.localDescription.sdp

    # ---- inbound ---------------------------------------------------------------------------------------
    def _on_track(self, track) -> None:
        if track.kind != "audio" or (self._mic_task is not None and not self._mic_task.done()):
            log.info("[%s] ignoring an extra %s track", self.id, track.kind)
            return
        self._mic_task = self.tasks.spawn(self._pump(track), "mic")

    async def _pump(self, track) -> None:
        """Remote audio → session input, frame by frame (the session's VAD runs on each append)."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            self.last_activity = loop.time()
            fmt = self.host.input_format
            data = self.mic(frame, fmt)
            if data:
                await self.host.append_audio(data, fmt)
        log.info("[%s] inbound audio ended after %d frames", self.id, self.mic.frames)

    def _on_datachannel(self, channel) -> None:
        """Events travel on the first `oai-events` channel (or, failing that, the first channel at all)."""
        if self.channel is not None and (self.channel.label == CHANNEL or channel.label != CHANNEL):
            log.info("[%s] ignoring extra data channel %r", self.id, channel.label)
            return
        self.channel = channel
        if channel.readyState == "open":
            self._flush_pending()
        channel.on("open", self._flush_pending)
        channel.on("message", self._on_message)

    def _on_message(self, message) -> None:
        self.last_activity = asyncio.get_running_loop().time()
        if self.closed:
            return
        if isinstance(message, bytes):
            self.host.client_error(ProtocolError(
                "binary messages are not part of the Realtime protocol; send JSON text events",
                code="invalid_event"))
            return
        if self._local_event(message):
            return
        self._inbox.put_nowait(message)

    async def _read(self) -> None:
        """Client events in arrival order, one at a time (a large append yields between its slices)."""
        while True:
            await self.host.client_event(await self._inbox.get())

    def _local_event(self, text: str) -> bool:
        """`output_audio_buffer.clear` is a WebRTC-only client event: the edge owns the output buffer."""
        if "output_audio_buffer.clear" not in text:
            return False
        try:
            msg = load_json(text)
        except JSONTextError:
            return False
        if not isinstance(msg, dict) or msg.get("type") != "output_audio_buffer.clear":
            return False
        self._clear_output(requested=True)
        return True

    # ---- outbound --------------------------------------------------------------------------------------
    async def _out(self, event: ServerEvent) -> None:
        """A session event → the speaker track or the data channel. Called by the session's single writer,
        in order; control events arrive here ahead of queued audio."""
        if isinstance(event, AudioDelta):
            self._audio(event)
            return
        if isinstance(event, AudioDone):
            self._end_audio(event.response_id)
        elif isinstance(event, SpeechStarted):
            self._send(event)
            td = self.session.config.turn_detection
            if td is not None and td.interrupt_response:
                self._clear_output(requested=False)  # barge-in: the voice stops now, not after its queue
            return
        elif isinstance(event, ResponseDone):
            self._end_audio(event.response_id)
            self._cleared.discard(event.response_id)  # nothing of a response follows its response.done
        elif isinstance(event, ErrorEvent):
            self.metrics.ws_errors.labels(KIND, str(event.code)).inc()
        self._send(event)

    def _audio(self, event: AudioDelta) -> None:
        rid = event.response_id
        if rid in self._cleared or not self.audio_out:
            return
        self._items[rid] = event.item_id
        if rid not in self._resamplers:
            self._resamplers[rid] = StreamResampler(event.format.rate, RATE, dtype="int16")
        self.speaker.push(rid, self._resamplers[rid](decode_pcm(event.audio, event.format)))

    def _end_audio(self, rid: str | None) -> None:
        resampler = self._resamplers.pop(rid, None) if rid else None
        if rid is None:
            return
        if resampler is not None and rid not in self._cleared:
            self.speaker.push(rid, resampler(np.zeros(0, np.int16), last=True))
        self.speaker.finish(rid)

    def _clear_output(self, requested: bool) -> None:
        """Drop all unplayed assistant audio now and truncate each affected item to what was played.
        Barge-in reports a clear only when audio was dropped; a client's request is always answered."""
        lost = self.speaker.clear()
        for rid, heard_ms in lost.items():
            self._cleared.add(rid)
            self._resamplers.pop(rid, None)
            self._send(OutputAudioBuffer("cleared", rid))
            log.info("[%s] output cleared (%s): %s heard for %.0f ms", self.id,
                     "requested" if requested else "barge-in", rid, heard_ms)
            self._truncate(rid, heard_ms)
            self._items.pop(rid, None)
        if requested and not lost:
            self._send(OutputAudioBuffer("cleared", None))

    def _truncate(self, rid: str, heard_ms: float) -> None:
        """Cut the response's item to what was played: a client event of the edge, in line with the others."""
        item_id = self._items.get(rid)
        item = self.session.conversation.get(item_id) if item_id else None
        if item is None or not item.content or item.content[0].type != "audio":
            return
        self._inbox.put_nowait(ItemTruncate(None, item_id, 0, int(min(heard_ms, item.content[0].audio_ms))))

    def _playback_event(self, kind: str, rid: str) -> None:
        if kind == "stopped":
            self._items.pop(rid, None)  # played out: it can no longer be cut short
        self._send(OutputAudioBuffer(kind, rid))

    def _send(self, event: ServerEvent) -> None:
        """An event → the data channel as Realtime JSON (held until the channel opens)."""
        wire = self._wire(event)
        if wire is None:  # no equivalent in the client's dialect
            return
        text = json.dumps(wire)
        channel = self.channel
        if channel is None or channel.readyState != "open":
            self._pending.append(text)
            return
        try:
            channel.send(text)
        except Exception:  # closing under us: the watchdog or the state handler ends the call
            log.debug("[%s] data channel send failed", self.id, exc_info=True)

    def _flush_pending(self) -> None:
        channel = self.channel
        while self._pending and channel is not None and channel.readyState == "open":
            try:
                channel.send(self._pending.popleft())
            except Exception:
                break

    # ---- lifecycle -------------------------------------------------------------------------------------
    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("[%s] connection %s", self.id, state)
        if state == "connected":
            self.connected = True
            self.last_activity = asyncio.get_running_loop().time()
        elif state in ("failed", "closed"):
            self.request_close(f"connection {state}")

    def request_close(self, reason: str, code: str | None = None) -> None:
        """Close from a callback (no await possible there). The task is kept until it is done."""
        if self._close_task is None and not self.closed:
            self._close_task = asyncio.ensure_future(self.close(reason, code))

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        while not self.closed:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = loop.time()
            if not self.connected and now - self.created > s.webrtc_connect_timeout_s:
                self.request_close(f"not connected within {s.webrtc_connect_timeout_s:.0f} s")
                return
            if self.connected and now - self.last_activity > s.webrtc_idle_timeout_s:
                self.request_close(f"no media or messages for {s.webrtc_idle_timeout_s:.0f} s (peer gone)")
                return

    async def _goodbye(self, reason: str, code: str | None) -> None:
        """Last events on an open data channel, flushed before the connection goes."""
        channel = self.channel
        if code not in ("server_shutdown", "session_expired") or channel is None or channel.readyState != "open":
            return
        if code == "server_shutdown":
            self.host.shutdown()
        else:
            self.host.client_error(ProtocolError(reason, code=code))
        await self.host.drain(1.0)
        deadline = asyncio.get_running_loop().time() + 1.0  # SCTP has them queued: give them a moment to leave
        while getattr(channel, "bufferedAmount", 0) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)

    async def close(self, reason: str = "closed", code: str | None = None) -> None:
        """End the call. `code` names a reason the client is told on the data channel first: `server_shutdown`
        (the response in flight ends `cancelled`), `session_expired` (an error event); `slow_consumer` and
        the rest end it without a word (a vanished or stuck peer would not read one)."""
        if self.closed:
            if self._close_task is not None and self._close_task is not asyncio.current_task():
                await asyncio.shield(self._close_task)
            return
        self.closed, self.close_reason = True, reason
        log.info("[%s] closing (%s); session %s", self.id, reason, self.session.id)
        if code is not None:
            self.metrics.ws_errors.labels(KIND, code).inc()
        if self._expiry is not None:
            self._expiry.cancel()
        try:
            await self._goodbye(reason, code)
            await self.tasks.cancel_all()
            await close_host(self.app, self.host)
            self.speaker.stop()
            try:
                await asyncio.wait_for(self.pc.close(), 10)
            except Exception:
                log.warning("[%s] peer connection did not close cleanly", self.id, exc_info=True)
        finally:
            peers(self.app).pop(self.id, None)
            ended = ended_calls(self.app)
            ended[self.id] = self.owner
            while len(ended) > ENDED_MEMORY:
                ended.popitem(last=False)
            self.slot.release()
            log.info("[%s] closed: %d frames in, %d frames out (%d with speech)", self.id, self.mic.frames,
                     self.speaker.frames_sent, self.speaker.voiced_frames)
