"""Streaming ASR over WebSocket: `/v1/asr/stream`.

Client → server: binary frames of PCM16 little-endian mono at the declared `sample_rate` (query parameter,
default 16000; any rate 8000–48000 is resampled with soxr), and JSON control messages:
`{"type":"flush"}` (end the current utterance now), `{"type":"end"}` (flush, send `done`, close).
Server → client: `ready`, `speech_started`, `partial`, `speech_stopped`, `final`, `done`, `error`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, WebSocket

from asr.streaming import StreamingConfig, StreamingTranscriber
from asr.vad import VADConfig
from audio_server.audio_io import StreamResampler, pcm16_to_float
from audio_server.query_params import query_number
from audio_server.ws_common import CLOSE_GOING_AWAY, CLOSE_POLICY, SocketSession, parse_control, serve
from realtime.languages import whisper_language

log = logging.getLogger(__name__)
router = APIRouter()


def _config_from_query(q) -> tuple[int, str, StreamingConfig]:
    rate = int(query_number(q, "sample_rate", 16000, integer=True, low=8000, high=48000))
    vad = VADConfig(threshold=query_number(q, "threshold", 0.5, integer=False, low=0, high=1),
                    silence_duration_ms=int(query_number(q, "silence_ms", 400, integer=True, low=0, high=10000)),
                    prefix_padding_ms=int(query_number(q, "prefix_padding_ms", 300, integer=True, low=0, high=5000)))
    config = StreamingConfig(vad=vad, language=whisper_language(q.get("language")) or "en",
                             partials=q.get("partials", "true").lower() != "false",
                             partial_interval_s=query_number(q, "partial_interval", 0.5, integer=False, low=0.1,
                                                             high=10))
    return rate, q.get("model") or "", config


@router.websocket("/v1/asr/stream")
async def asr_stream(ws: WebSocket) -> None:
    await serve(ws, "asr", _transcribe)


async def _transcribe(session: SocketSession) -> None:
    """One accepted stream: its parameters and models, then audio in and events out until it ends."""
    state = session.ws.app.state
    settings, hub, metrics = state.settings, state.hub, state.metrics
    try:
        rate, model, config = _config_from_query(session.ws.query_params)
        model_name = hub.resolve_asr_name(model)
    except ValueError as exc:
        await session.error("invalid_parameters", str(exc))
        session.end(CLOSE_POLICY, "invalid parameters")
        return
    loop = asyncio.get_running_loop()
    asr = await loop.run_in_executor(hub.executor, hub.asr, model_name)
    vad = await loop.run_in_executor(hub.executor, hub.vad)
    ended_at: dict[int, float] = {}

    async def emit(event: dict) -> None:
        if event["type"] == "speech_stopped":
            ended_at[event["segment_id"]] = time.perf_counter()
        elif event["type"] == "final" and event["segment_id"] in ended_at:
            metrics.asr_final_latency.observe(time.perf_counter() - ended_at.pop(event["segment_id"]))
        await session.send_json(event)

    transcriber = StreamingTranscriber(asr, vad, config, hub.executor, emit)
    resampler = StreamResampler(rate, 16000)
    received_s = 0.0
    log.info("[%s] open: %d Hz, model %s", session.id, rate, model_name)
    try:
        await session.send_json({"type": "ready", "session_id": session.id, "sample_rate": rate, "model": model_name})
        async for kind, payload in session.messages():
            if kind == "bytes":
                if len(payload) > settings.max_ws_message_bytes:
                    await session.error("frame_too_large", f"audio frame of {len(payload)} bytes exceeds "
                                        f"{settings.max_ws_message_bytes}; send 20–100 ms frames")
                    continue
                if len(payload) % 2:
                    await session.error("invalid_audio", "PCM16 frames must have an even number of bytes")
                    continue
                received_s += len(payload) / 2 / rate
                if received_s > settings.max_stream_seconds:
                    await session.error("stream_too_long", f"streams are limited to {settings.max_stream_seconds:.0f} s")
                    session.end(CLOSE_POLICY, "stream too long (max_stream_seconds)")
                    break
                await transcriber.feed(resampler(pcm16_to_float(payload)))
                continue
            msg, problem = parse_control(payload)
            if problem:
                await session.error("invalid_json", problem)
                continue
            if msg["type"] == "flush":
                await transcriber.flush()
            elif msg["type"] == "end":
                await transcriber.flush()
                await session.send_json({"type": "done", "segments": transcriber.finals_emitted,
                                         "audio_seconds": round(received_s, 3)})
                break
            else:
                await session.error("unknown_message", f"unknown message type {msg['type']!r}; "
                                    "expected binary PCM16 audio, 'flush' or 'end'")
        if session.end_code == CLOSE_GOING_AWAY:  # shutdown: finish the utterance in progress if time allows
            try:
                async with asyncio.timeout(max(0.0, session.time_to_close() - 0.5)):
                    await transcriber.flush()
            except TimeoutError:
                pass
        if session.end_error in ("server_shutdown", "idle_timeout", "session_expired"):  # (counted by end())
            await session.send_json({"type": "error", "code": session.end_error, "message": session.end_reason})
    finally:  # before the socket closes
        await transcriber.close()
        log.info("[%s] closed after %.1f s of audio", session.id, received_s)
