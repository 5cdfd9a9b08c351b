"""OpenAI-compatible audio endpoints: `/v1/audio/transcriptions` and `/v1/audio/speech`."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from asr.whisper_asr import DecodeOptions
from audio_server.audio_io import SPEECH_FORMATS, AudioDecodeError, SpeechEncoder, decode_audio
from audio_server.errors import APIError
from audio_server.models import TTS_ALIASES, TTS_MODEL
from audio_server.subtitles import to_srt, to_verbose_json, to_vtt
from audio_server.threads import iterate_in_thread
from realtime.languages import UnknownLanguage, whisper_language
from tts.piper_tts import SpeechOptions, UnknownVoice
from tts.text_normalize import has_speech

router = APIRouter()
_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
_ENCODER_POSITIONS_PER_S = 50  # Whisper's encoder: 1500 positions per 30 s window


def _form_value(form, name: str, default=None):
    value = form.get(name, default)
    if isinstance(value, UploadFile):
        raise APIError(400, f"'{name}' must be a form field, not a file", param=name)
    return value


def _language(value) -> str | None:
    try:
        return whisper_language(value if isinstance(value, str) else None)
    except UnknownLanguage as exc:  # before any decoding: a 400 naming the parameter, as OpenAI answers it
        raise APIError(400, str(exc), param="language", code="invalid_language_format") from None


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request):
    state = request.app.state
    settings, hub, metrics = state.settings, state.hub, state.metrics
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise APIError(415, "send the audio as multipart/form-data with a 'file' field", code="unsupported_media_type")
    length = int(request.headers.get("content-length") or 0)
    if length > settings.max_upload_bytes + 64 * 1024:
        raise APIError(413, f"upload too large: limit is {settings.max_upload_bytes} bytes", code="file_too_large")
    try:
        form = await request.form(max_files=1, max_fields=32)
    except StarletteHTTPException:  # the body went past max_request_bytes (limits.BodyTooLarge): 413
        raise
    except Exception as exc:  # malformed multipart body
        raise APIError(400, f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "missing 'file' (the audio file to transcribe)", param="file")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise APIError(413, f"upload too large: limit is {settings.max_upload_bytes} bytes", code="file_too_large")
    fmt = _form_value(form, "response_format", "json")
    if fmt not in _FORMATS:
        raise APIError(400, f"response_format must be one of {', '.join(_FORMATS)}", param="response_format")
    try:
        model_name = hub.resolve_asr_name(_form_value(form, "model"), batch=True)
        options = DecodeOptions(
            # Without a language Whisper detects one, which on a few seconds of phone audio can be another
            # script's: a server that knows its callers' language says so (VOXLINE_ASR_LANGUAGE).
            language=_language(_form_value(form, "language")) or settings.asr_language or None,
            prompt=_form_value(form, "prompt") or None,
            temperature=float(_form_value(form, "temperature", 0) or 0),
            word_timestamps="word" in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities"),
        )
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc
    stream = str(_form_value(form, "stream", "false")).lower() == "true"
    try:
        audio = await asyncio.get_running_loop().run_in_executor(hub.executor, decode_audio, data, 16000,
                                                                 settings.max_upload_audio_s)
    except AudioDecodeError as exc:
        raise APIError(400, f"{exc} (supported: wav, flac, ogg, opus, mp3, m4a, webm)", param="file",
                       code="invalid_audio") from exc
    if len(audio) < 1600:
        raise APIError(400, "the audio is shorter than 0.1 s", param="file", code="audio_too_short")
    asr = await asyncio.get_running_loop().run_in_executor(hub.executor, hub.asr, model_name)
    if stream:
        return StreamingResponse(_transcribe_sse(hub, asr, audio, options), media_type="text/event-stream")
    t0 = time.perf_counter()
    transcript = await asyncio.get_running_loop().run_in_executor(hub.executor, asr.transcribe, audio, options)
    metrics.asr_rtf.labels(model_name).observe((time.perf_counter() - t0) / max(transcript.duration, 1e-3))
    if fmt == "text":
        return PlainTextResponse(transcript.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(transcript), media_type="application/x-subrip")
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(transcript), media_type="text/vtt")
    usage = _duration_usage(transcript.duration)
    if fmt == "verbose_json":
        return JSONResponse({**to_verbose_json(transcript, words=options.word_timestamps), "usage": usage})
    return JSONResponse({"text": transcript.text, "usage": usage})


async def _transcribe_sse(hub, asr, audio: np.ndarray, options: DecodeOptions):
    """OpenAI's streaming transcription events: a `transcript.text.delta` as each segment is decoded (Whisper
    decodes 30 s windows: a long file's first words arrive after its first window, not after the whole file),
    then `transcript.text.done` with the text and the usage."""
    texts: list[str] = []
    output_tokens = 0

    def segments():
        yield from asr.stream_segments(audio, options)[0]

    try:
        async for seg in iterate_in_thread(hub.executor, segments):
            output_tokens += seg.tokens
            if not seg.text:
                continue
            delta = (" " if texts else "") + seg.text
            texts.append(seg.text)
            yield f"data: {json.dumps({'type': 'transcript.text.delta', 'delta': delta})}\n\n"
        usage = _token_usage(asr, audio, options, output_tokens)
        yield f"data: {json.dumps({'type': 'transcript.text.done', 'text': ' '.join(texts), 'usage': usage})}\n\n"
    except Exception as exc:
        yield f"data: {json.dumps({'type': 'error', 'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"


def _token_usage(asr, audio: np.ndarray, options: DecodeOptions, output_tokens: int) -> dict:
    """A streamed transcription's usage, in OpenAI's token form (`transcript.text.done.usage`): the audio
    tokens are Whisper's encoder positions over the audio (50 a second), the text tokens the prompt's."""
    audio_tokens = math.ceil(len(audio) / 16000 * _ENCODER_POSITIONS_PER_S)
    text_tokens = asr.prompt_tokens(options.prompt)
    return {"type": "tokens", "input_tokens": audio_tokens + text_tokens, "output_tokens": output_tokens,
            "total_tokens": audio_tokens + text_tokens + output_tokens,
            "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": text_tokens}}


def _duration_usage(duration_s: float) -> dict:
    """A transcription's usage as OpenAI gives it for whisper-1: the input's duration, in whole seconds."""
    return {"type": "duration", "seconds": math.ceil(duration_s)}


class SpeechRequest(BaseModel):
    model: str = "piper-joe"
    input: str = Field(min_length=1)
    voice: str | dict = "joe"
    instructions: str | None = None
    response_format: Literal["wav", "pcm", "flac", "mp3", "opus", "aac"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


_TTS_MODELS = (TTS_MODEL, *TTS_ALIASES)  # one list with /v1/models (audio_server.models)


def _preset_speech_models(settings) -> tuple[str, ...]:
    """A checkpoint preset's own speech model, by its /v1/models name (the standard names above serve it too)."""
    if settings.preset == "step-audio-tts":
        from audio_server.step_audio_tts_modes import MODEL_NAME
        return (MODEL_NAME,)
    return ()


@router.post("/v1/audio/speech")
async def speech(request: Request):
    state = request.app.state
    settings, hub, metrics = state.settings, state.hub, state.metrics
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise APIError(415, "send a JSON body (Content-Type: application/json)", code="unsupported_media_type")
    raw = await request.body()
    try:
        body = SpeechRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param or None) from exc
    accepted = _TTS_MODELS + _preset_speech_models(settings)
    if body.model not in accepted:
        raise APIError(400, f"unknown speech model {body.model!r}; available: {', '.join(accepted)}", param="model")
    if len(body.input) > settings.max_speech_chars:
        raise APIError(400, f"input is longer than {settings.max_speech_chars} characters", param="input")
    if not has_speech(body.input):  # spaces, emoji only: a 0 s file would be a silent success
        raise APIError(400, "input has nothing to speak (only whitespace, emoji or symbols)", param="input")
    if body.stream_format == "sse":
        raise APIError(400, "stream_format 'sse' is not supported; use 'audio' (the body is streamed)",
                       param="stream_format")
    tts = await asyncio.get_running_loop().run_in_executor(hub.executor, hub.tts)
    try:
        options = SpeechOptions(voice=tts.resolve_voice(body.voice), speed=body.speed)
    except UnknownVoice as exc:
        raise APIError(400, str(exc), param="voice") from exc
    encoder = SpeechEncoder(body.response_format, tts.sample_rate)

    async def audio_chunks():
        t0 = time.perf_counter()
        samples = 0
        async for sentence in iterate_in_thread(hub.executor, lambda: tts.synthesize(body.input, options)):
            if samples == 0:
                metrics.tts_first_chunk.observe(time.perf_counter() - t0)
            samples += len(sentence.pcm)
            chunk = encoder.encode(sentence.pcm)
            if chunk:
                yield chunk
        tail = encoder.finish()
        if tail:
            yield tail
        if samples:
            metrics.tts_rtf.observe((time.perf_counter() - t0) / (samples / tts.sample_rate))

    headers = {"X-Sample-Rate": str(encoder.out_rate)}
    return StreamingResponse(audio_chunks(), media_type=SPEECH_FORMATS[body.response_format][0], headers=headers)
