"""Twilio Media Streams: `WS /twilio/media` runs one realtime voice session per phone call.

The edge only translates. Twilio's frames (parsed by `audio_server.twilio_protocol`) become session input:
`media` payloads are appended to a `RealtimeSession` configured for G.711 μ-law 8 kHz in and out (as a
Realtime client with `audio/pcmu` would), so the session's own codec, resampling, VAD, ASR and response
pipeline do the work. The session's output (the typed events of `realtime.events`, from its `RealtimeHost`)
becomes Twilio's — `TwilioCall._out` is this wire's one serializer:

- `AudioDelta` (μ-law bytes as the session encoded them) → 160-byte (20 ms) `media` frames with the streamSid;
- the end of a response's audio → a `mark` named after the response id (Twilio echoes it once played);
- barge-in (`speech_started` while our audio may still be playing, or a response cancelled with
  `turn_detected`) → `clear` at once, then the assistant item is truncated to what the caller heard:
  all of it when its mark came back, else what was sent minus what was still queued at Twilio (audio
  plays in real time from when it arrives).

Twilio cannot receive error events, so protocol problems are logged and counted
(`voxline_ws_protocol_errors_total{kind="twilio"}`) and the frame is skipped; a `start` whose media format
is not μ-law 8000 Hz mono closes the socket (1003). `dtmf` digits become conversation items (a user text
`[DTMF 5]`; customParameters `dtmf=respond` also asks for a reply, `dtmf=ignore` drops them). `stop` or a
dropped socket ends the session and cancels all of its tasks.

Admission, before any work: the handshake passes the origin check and the session limits like every socket
(no API key: Twilio cannot send one), but takes no session slot. The socket must then send its `start` frame
within `twilio_start_timeout_s`; when auth is configured that frame must carry the stream token the
authenticated webhook minted for this call (`audio_server.twilio_tokens`: bound to the callSid, expiring,
single use). Only a verified start takes a slot (counted against `max_sessions`) and loads models; a bare,
silent or wrong socket is closed with 1008 having cost nothing but the connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, WebSocket

from audio_server import twilio_protocol as tp
from audio_server.routes_realtime import close_host, new_session_config, open_host, speech_models, wind_down
from audio_server.ws_common import CLOSE_BUSY, CLOSE_INTERNAL, CLOSE_POLICY, SocketSession, serve
from audio_server.twilio_tokens import Refusal, stream_tokens, tokens_required
from realtime.audio import PCMU
from realtime.config import ConfigError, SessionConfig, apply_update
from realtime.events import AudioDelta, AudioDone, ErrorEvent, ResponseDone, ServerEvent, SpeechStarted
from realtime.host import RealtimeHost
from realtime.items import new_id
from realtime.protocol import ItemCreate, ItemTruncate, ResponseCreate

log = logging.getLogger(__name__)
router = APIRouter()
KIND = "twilio"
FRAME_MS = 20.0
SILENCE = b"\xff"  # μ-law zero
DTMF_MODES = ("context", "respond", "ignore")
#: frames a socket may send before its `start` (Twilio sends one: `connected`); more is not Twilio
MAX_FRAMES_BEFORE_START = 8


@dataclass
class Playback:
    """Our audio of one response as Twilio has it."""

    response_id: str
    item_id: str | None = None
    sent_ms: float = 0.0  # audio sent as media frames
    marked: bool = False  # its mark has been sent
    played: bool = False  # Twilio echoed the mark: all of it was heard
    cleared: bool = False


@dataclass
class CallState:
    stream_sid: str = ""
    call_sid: str = ""
    pending: bytearray = field(default_factory=bytearray)  # μ-law not yet a whole frame
    pending_response: str | None = None
    playbacks: dict[str, Playback] = field(default_factory=dict)
    play_end: float = 0.0  # monotonic time at which everything sent so far has played at Twilio
    frames_sent: int = 0
    clears: int = 0


def session_config(params: dict, base: SessionConfig, language: str = "en") -> SessionConfig:
    """The call's session: μ-law 8 kHz both ways in the call's `language`, plus the stream's `language` /
    `voice` / `instructions` parameters."""
    # A call's language is known (the number called, the bot's configuration): Whisper's own detection, on a
    # few seconds of 8 kHz speech, came back in Thai script for English callers (bench/phone_asr.py, "auto").
    def transcription(lang: object) -> dict:
        return {"audio": {"input": {"transcription": {"model": "whisper-1", "language": lang}}}}

    config = apply_update(base, {"audio": {"input": {"format": {"type": "audio/pcmu"}},
                                                                 "output": {"format": {"type": "audio/pcmu"}}}})
    config = apply_update(config, transcription(language))
    for key, update in (("language", transcription(params.get("language"))),
                        ("instructions", {"instructions": params.get("instructions")}),
                        ("voice", {"audio": {"output": {"voice": params.get("voice")}}})):
        if params.get(key):
            try:
                config = apply_update(config, update)
            except ConfigError as exc:
                log.warning("twilio: ignoring customParameters.%s: %s", key, exc.message)
    return config


class TwilioCall:
    """One call: Twilio frames in → session; session events → Twilio frames."""

    def __init__(self, ws: WebSocket, sock: SocketSession):
        self.ws, self.sock = ws, sock
        self.app = ws.app
        self.metrics = self.app.state.metrics
        self.state = CallState()
        self.host: RealtimeHost | None = None
        self.dtmf_mode = "context"

    def problem(self, code: str, message: str) -> None:
        self.metrics.ws_errors.labels(KIND, code).inc()
        log.info("[%s] %s: %s", self.sock.id, code, message)

    # ---- in --------------------------------------------------------------------------------------------
    async def handle(self, text: str) -> bool:
        """One inbound frame. Returns False when the call is over."""
        try:
            ev = tp.parse(text)
        except tp.TwilioProtocolError as exc:
            self.problem(exc.code, str(exc))
            return True
        if isinstance(ev, tp.Media):
            if self.host is None:
                self.problem("media_before_start", "media frame before 'start'")
            elif ev.track not in ("inbound", "inbound_track"):
                pass  # only the caller's audio is speech for the session
            elif ev.payload:
                await self.host.append_audio(ev.payload, PCMU)
            return True
        if isinstance(ev, tp.Start):  # the first one was taken by `await_start`
            self.problem("duplicate_start", "a second 'start' on one stream is ignored")
            return True
        if isinstance(ev, tp.Mark):
            pb = self.state.playbacks.get(ev.name)
            if pb is None:
                self.problem("unknown_mark", f"mark {ev.name!r} is not one of ours")
            else:
                pb.played = True
                self._forget_played()
            return True
        if isinstance(ev, tp.Dtmf):
            await self._dtmf(ev.digit)
            return True
        if isinstance(ev, tp.Ping):
            await self.sock.send_text(tp.pong())
            return True
        if isinstance(ev, tp.Stop):
            log.info("[%s] stop (call %s)", self.sock.id, ev.call_sid or self.state.call_sid)
            return False
        return True  # connected

    # ---- admission --------------------------------------------------------------------------------------
    async def await_start(self, timeout: float) -> tp.Start | None:
        """Read until the `start` frame and verify it: the stream token first (when auth is configured),
        then the media format. None (the session already ended with a close code) for a socket that
        closes, stays silent for `timeout`, sends anything else for long, or brings a bad start."""
        try:
            async with asyncio.timeout(timeout):
                for _ in range(MAX_FRAMES_BEFORE_START):
                    kind, payload = await self.sock.receive()
                    if kind == "close":
                        return None
                    if kind != "text":
                        self.problem("binary_frame", "Media Streams frames are JSON text")
                        continue
                    try:
                        ev = tp.parse(payload)  # type: ignore[arg-type]
                    except tp.TwilioProtocolError as exc:
                        self.problem(exc.code, str(exc))
                        continue
                    if isinstance(ev, tp.Start):
                        return ev if self._verify_start(ev) else None
                    if not isinstance(ev, tp.Connected):
                        self.problem("before_start", f"{type(ev).__name__.lower()} frame before 'start'")
        except TimeoutError:
            self._refuse(CLOSE_POLICY, "start_timeout", f"no 'start' frame within {timeout:g} s of connecting")
            return None
        self._refuse(CLOSE_POLICY, "start_missing", f"{MAX_FRAMES_BEFORE_START} frames and no 'start'")
        return None

    def _verify_start(self, ev: tp.Start) -> bool:
        refusal = self._token_refusal(ev)
        if refusal is not None:
            self._refuse(CLOSE_POLICY, refusal.code, f"{refusal.message} (auth is configured)", "invalid stream token")
            return False
        if (ev.encoding, ev.sample_rate, ev.channels) != ("audio/x-mulaw", 8000, 1):
            self._refuse(1003, "invalid_media_format", f"unsupported media format {ev.encoding} {ev.sample_rate} "
                         f"Hz x{ev.channels}; Media Streams send audio/x-mulaw 8000 Hz mono", "unsupported mediaFormat")
            return False
        return True

    def _token_refusal(self, ev: tp.Start) -> Refusal | None:
        if not tokens_required(self.app.state.settings):
            return None
        if ev.custom_parameters.get("callSid", ev.call_sid) != ev.call_sid:  # checked first: keeps the token unused
            return Refusal("invalid_token", "customParameters.callSid is not the stream's callSid")
        return stream_tokens(self.app).claim(ev.custom_parameters.get("token"), ev.call_sid)

    def _refuse(self, close_code: int, code: str, message: str, reason: str | None = None) -> None:
        """Count and log why, and end the socket with `close_code` (sent when the route closes it)."""
        self.problem(code, message)
        self.sock.end(close_code, reason or message)

    async def begin(self, ev: tp.Start, vad) -> None:
        """The verified call starts: its realtime session, fed by `handle` from now on."""
        st = self.state
        st.stream_sid, st.call_sid = ev.stream_sid, ev.call_sid
        params = ev.custom_parameters
        mode = params.get("dtmf", "context")
        self.dtmf_mode = mode if mode in DTMF_MODES else "context"
        settings = self.app.state.settings

        def backlog(queued: int) -> None:
            self.sock.end(CLOSE_POLICY, f"Twilio too slow: {queued} events wait unread", "slow_consumer")

        config = session_config(params, new_session_config(settings, "voxline-realtime"), settings.phone_language)
        self.host = open_host(self.app, new_id("sess"), vad, config, self._out, backlog)
        log.info("[%s] start stream %s call %s → %s (voice %s)", self.sock.id, st.stream_sid, st.call_sid,
                 self.host.id, config.voice)
        await self.host.start()

    async def _dtmf(self, digit: str) -> None:
        host = self.host
        if host is None:
            self.problem("dtmf_before_start", "dtmf frame before 'start'")
            return
        if self.dtmf_mode == "ignore":
            return
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"[DTMF {digit}]"}]}
        await host.client_event(ItemCreate(None, item))
        if self.dtmf_mode == "respond" and host.session.active is None:
            await host.client_event(ResponseCreate(None))

    # ---- out: this wire's serializer ---------------------------------------------------------------------
    async def _send(self, text: str) -> None:
        await self.sock.send_text(text)

    async def _out(self, event: ServerEvent) -> None:
        """A session event → Twilio frames. Called by the session's single writer, in order."""
        if isinstance(event, AudioDelta):
            await self._audio(event)
        elif isinstance(event, ResponseDone) and event.status == "cancelled" and event.reason == "turn_detected":
            await self._barge_in()
        elif isinstance(event, (AudioDone, ResponseDone)):
            await self._mark(event.response_id)
        elif isinstance(event, SpeechStarted):
            await self._barge_in()
        elif isinstance(event, ErrorEvent):
            self.problem(str(event.code), str(event.error.get("message")))

    async def _audio(self, event: AudioDelta) -> None:
        st = self.state
        if event.format != PCMU:  # the call's session is μ-law both ways; nothing else can be played
            self.problem("unsupported_output_format", f"response audio in {event.format}")
            return
        rid = event.response_id
        pb = st.playbacks.get(rid)
        if pb is None:
            pb = st.playbacks[rid] = Playback(rid)
        if pb.cleared:
            return
        pb.item_id = event.item_id
        if st.pending_response != rid:
            await self._flush()
            st.pending_response = rid
        st.pending += event.audio
        while len(st.pending) >= tp.FRAME_BYTES:
            await self._frame(pb, bytes(st.pending[:tp.FRAME_BYTES]))
            del st.pending[:tp.FRAME_BYTES]

    async def _mark(self, rid: str) -> None:
        """The response's audio is all sent: a mark after it, which Twilio echoes once it has played."""
        st = self.state
        pb = st.playbacks.get(rid)
        if pb is not None and not pb.cleared and not pb.marked:
            if st.pending_response == rid:
                await self._flush()
            pb.marked = True
            await self._send(tp.mark(st.stream_sid, rid))

    async def _frame(self, pb: Playback, frame: bytes) -> None:
        st = self.state
        await self._send(tp.media(st.stream_sid, frame))
        now = time.monotonic()
        st.play_end = max(st.play_end, now) + FRAME_MS / 1000
        pb.sent_ms += FRAME_MS
        st.frames_sent += 1

    async def _flush(self) -> None:
        """Send the last partial frame of the current response, padded with silence to 160 bytes."""
        st = self.state
        if st.pending and st.pending_response is not None:
            pb = st.playbacks.get(st.pending_response)
            frame = bytes(st.pending) + SILENCE * (tp.FRAME_BYTES - len(st.pending))
            if pb is not None and not pb.cleared:
                await self._frame(pb, frame)
        st.pending.clear()
        st.pending_response = None

    def _forget_played(self) -> None:
        for rid in [rid for rid, pb in self.state.playbacks.items() if pb.played or pb.cleared]:
            del self.state.playbacks[rid]

    async def _barge_in(self) -> None:
        """The caller speaks: if any of our audio may still be playing, `clear` it now and truncate."""
        st = self.state
        now = time.monotonic()
        audible = [pb for pb in st.playbacks.values() if pb.sent_ms > 0 and not pb.played and not pb.cleared]
        if not audible or now >= st.play_end:
            for pb in audible:
                pb.played = True  # it all played out before the caller spoke
            self._forget_played()
            return
        await self._send(tp.clear(st.stream_sid))
        st.clears += 1
        unplayed_ms = (st.play_end - now) * 1000
        st.play_end = now
        st.pending.clear()
        st.pending_response = None
        # The newest audio is the unplayed part: walk back from the last response.
        for pb in reversed(audible):
            heard = max(0.0, pb.sent_ms - unplayed_ms)
            unplayed_ms = max(0.0, unplayed_ms - pb.sent_ms)
            pb.cleared = True
            await self._truncate(pb, heard)
        log.info("[%s] barge-in: clear sent", self.sock.id)
        self._forget_played()

    async def _truncate(self, pb: Playback, heard_ms: float) -> None:
        host = self.host
        item = host.session.conversation.get(pb.item_id) if host is not None and pb.item_id else None
        if item is None:
            return
        part = item.content
        limit = part[0].audio_ms if part and part[0].type == "audio" else 0.0
        await host.client_event(ItemTruncate(None, pb.item_id, 0, int(min(heard_ms, limit))))  # type: ignore[union-attr]

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def close(self) -> None:
        if self.host is not None:
            await close_host(self.app, self.host)


@router.websocket("/twilio/media")
async def twilio_media(ws: WebSocket) -> None:
    """Twilio cannot present an API key (the Stream URL takes no query string, the handshake no custom
    headers): the handshake checks origin and limits, then the `start` frame's stream token authenticates
    the call (module docstring). The session slot is taken only then."""
    # No `internal_error` event on a failure (Twilio cannot read one): it is logged and closed with 1011.
    await serve(ws, KIND, _answer, key_required=False, take_slot=False)  # a full or closing server refuses at once


async def _answer(sock: SocketSession) -> None:
    """One accepted socket: its verified `start` (only then a slot and models), then frames until it ends."""
    call = TwilioCall(sock.ws, sock)
    try:
        await _serve(call)
    finally:  # before the socket closes
        await call.close()
        log.info("[%s] closed (%d frames sent, %d clears)", sock.id, call.state.frames_sent, call.state.clears)


async def _serve(call: TwilioCall) -> None:
    """The call's `start`, checked and counted, its models, then every frame until `stop` or a close."""
    sock = call.sock
    hub, settings = call.app.state.hub, call.app.state.settings
    start = await call.await_start(settings.twilio_start_timeout_s)
    if start is None:
        return
    refused = sock.slot.registry.refusal(None)  # again: the server may have filled while the start came
    if refused is not None:
        call.problem(refused[1], refused[2])
        sock.end(CLOSE_BUSY, refused[2])
        return
    sock.slot.acquire()  # no await since the check: the limits hold
    log.info("[%s] open", sock.id)
    try:
        vad = await speech_models(hub)
    except Exception:
        log.exception("[%s] models failed to load", sock.id)
        sock.end(CLOSE_INTERNAL, "speech models failed to load")
        return
    await call.begin(start, vad)
    async for kind, payload in sock.messages():
        if kind == "bytes":
            call.problem("binary_frame", "Media Streams frames are JSON text")
            continue
        if not await call.handle(payload):  # type: ignore[arg-type]
            break
    if call.host is not None:
        await wind_down(call.host, sock)
