"""Streaming TTS over WebSocket: `/v1/tts/stream`.

Client → server JSON: `{"type":"text","text":"…"}` (any number of pieces), `{"type":"flush"}` (speak what is
buffered even without a full stop), `{"type":"end"}` (flush, then `done` when all audio is out),
`{"type":"cancel"}` (drop queued text, stop after the current sentence).
Server → client: `ready`, binary PCM16 LE mono chunks at `sample_rate` (one or more per sentence),
`sentence` after each sentence's audio, `done {duration, samples}`, `cancelled`, `error`.
Query: `voice`, `speed`, `sample_rate` (output rate, default the voice's own 22050).
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from fastapi import APIRouter, WebSocket

from audio_server.audio_io import StreamResampler
from audio_server.query_params import query_number
from audio_server.threads import iterate_in_thread
from audio_server.ws_common import CLOSE_POLICY, SocketSession, parse_control, serve
from tts.piper_tts import SpeechOptions, UnknownVoice
from tts.text import SentenceChunker
from tts.text_normalize import has_speech

log = logging.getLogger(__name__)
router = APIRouter()
_END = object()
_MAX_PENDING_CHARS = 20_000
_MAX_PENDING_ITEMS = 1_000  # queued sentences and `end` marks (each `end` costs a `done` event)


class _Utterance:
    """Counters for the text between two `end`s (or a `cancel` and the next `end`): what `done` reports.
    Each queued sentence carries its utterance, so audio of a cancelled one is never counted in the next."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.samples = 0
        self.sentences = 0
        self.first_chunk_s: float | None = None
        self.texts = 0  # `text` messages received
        self.speakable = False  # whether any of them had something to say (not only spaces or emoji)


@router.websocket("/v1/tts/stream")
async def tts_stream(ws: WebSocket) -> None:
    await serve(ws, "tts", _synthesise)


async def _synthesise(session: SocketSession) -> None:
    """One accepted stream: its voice and options, then text in and audio out until it ends."""
    app = session.ws.app
    settings, hub, metrics = app.state.settings, app.state.hub, app.state.metrics
    q = session.ws.query_params
    loop = asyncio.get_running_loop()
    tts = await loop.run_in_executor(hub.executor, hub.tts)
    try:
        options = SpeechOptions(voice=tts.resolve_voice(q.get("voice")),
                                speed=query_number(q, "speed", 1.0, integer=False, low=0.25, high=4.0))
        out_rate = int(query_number(q, "sample_rate", tts.sample_rate, integer=True, low=8000, high=48000))
    except (ValueError, UnknownVoice) as exc:
        await session.error("invalid_parameters", str(exc))
        session.end(CLOSE_POLICY, "invalid parameters")
        return

    chunker = SentenceChunker()
    sentences: asyncio.Queue = asyncio.Queue()
    state = {"utt": _Utterance(), "cancel_epoch": 0, "pending_chars": 0}

    async def speak() -> None:
        """Synthesises queued sentences in order; `_END` marks where a `done` goes."""
        while True:
            item, epoch, utt = await sentences.get()
            if item is _END:
                await session.send_json({"type": "done", "duration": round(utt.samples / out_rate, 3),
                                         "samples": utt.samples, "sample_rate": out_rate,
                                         "sentences": utt.sentences})
                continue
            state["pending_chars"] -= len(item)
            if epoch != state["cancel_epoch"]:
                continue  # cancelled before we got to it
            resample = StreamResampler(tts.sample_rate, out_rate, dtype="int16")
            async for part in iterate_in_thread(hub.executor, lambda: tts.synthesize(item, options)):
                if epoch != state["cancel_epoch"]:
                    break
                pcm = resample(part.pcm)
                if utt.first_chunk_s is None:
                    utt.first_chunk_s = time.perf_counter() - utt.t0
                    metrics.tts_first_chunk.observe(utt.first_chunk_s)
                utt.samples += len(pcm)
                await session.send_bytes(pcm.astype("<i2").tobytes())
            else:
                if epoch != state["cancel_epoch"]:
                    continue  # cancelled while its last part was made: no tail, no `sentence`
                tail = resample(np.zeros(0, np.int16), last=True)  # the resampler's last few samples
                if len(tail):
                    utt.samples += len(tail)
                    await session.send_bytes(tail.astype("<i2").tobytes())
                utt.sentences += 1
                await session.send_json({"type": "sentence", "text": item, "index": utt.sentences - 1})

    def enqueue(texts: list[str]) -> None:
        for text in texts:
            state["pending_chars"] += len(text)
            sentences.put_nowait((text, state["cancel_epoch"], state["utt"]))

    worker = asyncio.create_task(speak())
    try:
        await session.send_json({"type": "ready", "session_id": session.id, "sample_rate": out_rate,
                                 "voice": options.voice, "format": "pcm16"})
        async for kind, payload in session.messages():
            if kind == "bytes":
                await session.error("unexpected_binary", "this socket takes JSON text messages only")
                continue
            if len(payload) > settings.max_ws_message_bytes:
                await session.error("message_too_large", f"message exceeds {settings.max_ws_message_bytes} bytes")
                continue
            msg, problem = parse_control(payload)
            if problem:
                await session.error("invalid_json", problem)
                continue
            kind = msg["type"]
            if kind in ("text", "end", "eos") and sentences.qsize() >= _MAX_PENDING_ITEMS:
                await session.error("too_many_requests", f"{_MAX_PENDING_ITEMS} requests wait to be spoken; "
                                    "wait for audio before sending more")
                continue
            if kind == "text":
                text = msg.get("text")
                if not isinstance(text, str):
                    await session.error("invalid_text", "'text' must be a string")
                    continue
                if state["pending_chars"] + len(text) > _MAX_PENDING_CHARS:
                    await session.error("too_much_text", f"more than {_MAX_PENDING_CHARS} characters are "
                                        "waiting to be spoken; wait for audio before sending more")
                    continue
                utt = state["utt"]
                if utt.texts == 0:
                    utt.t0 = time.perf_counter()
                utt.texts += 1
                utt.speakable = utt.speakable or has_speech(text)
                enqueue(chunker.push(text))
            elif kind == "flush":
                enqueue(chunker.flush())
            elif kind in ("end", "eos"):
                enqueue(chunker.flush())
                utt = state["utt"]
                if utt.texts and not utt.speakable:  # `done` still follows: each `end` gets one
                    await session.error("nothing_to_speak", "the text had nothing to speak (only whitespace, "
                                        "emoji or symbols)")
                sentences.put_nowait((_END, state["cancel_epoch"], utt))
                state["utt"] = _Utterance()
            elif kind == "cancel":
                state["cancel_epoch"] += 1
                state["utt"] = _Utterance()  # the next `done` counts only what is sent after the cancel
                chunker.flush()
                await session.send_json({"type": "cancelled"})
            else:
                await session.error("unknown_message", f"unknown message type {kind!r}; "
                                    "expected 'text', 'flush', 'end' or 'cancel'")
        if session.end_error in ("server_shutdown", "idle_timeout", "session_expired"):  # (counted by end())
            state["cancel_epoch"] += 1  # queued text is dropped; the sentence being spoken stops
            await session.send_json({"type": "error", "code": session.end_error, "message": session.end_reason})
    finally:  # before the socket closes
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
