"""A configured language is the language of the text: phone calls (VOXLINE_PHONE_LANGUAGE, customParameters) and
HTTP transcriptions that name none (VOXLINE_ASR_LANGUAGE). Whisper's own detection on a few seconds of 8 kHz
speech returned Thai script for English callers (bench/phone_asr.py, decoder "auto")."""

from __future__ import annotations

import dataclasses
import io

import httpx
import numpy as np
import pytest
import soundfile

from audio_server.routes_twilio_media import session_config
from bench.phone_asr import foreign_script
from realtime.config import SessionConfig
from tests.voices import speak

pytestmark = pytest.mark.slow


def test_a_call_is_transcribed_in_its_configured_language():
    assert session_config({}, SessionConfig(model="m")).transcription.language == "en"
    assert session_config({}, SessionConfig(model="m"), language="de").transcription.language == "de"
    assert session_config({"language": "fr"}, SessionConfig(model="m"), language="de").transcription.language == "fr"
    # a bad parameter is ignored (logged), never the call's end: the configured language stays
    assert session_config({"language": "not a language"}, SessionConfig(model="m")).transcription.language == "en"


def test_http_transcription_without_language_uses_the_configured_one(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    live = LiveServer(create_app(dataclasses.replace(hub.settings, asr_language="en"), hub)).start()
    try:
        phone = speak(hub, "What is the capital of France?", "piper", 8000)
        wav = io.BytesIO()
        soundfile.write(wav, np.asarray(phone, np.int16), 8000, format="WAV")
        with httpx.Client(timeout=120) as http:
            r = http.post(live.base_url + "/v1/audio/transcriptions",
                          files={"file": ("call.wav", wav.getvalue(), "audio/wav")},
                          data={"model": "whisper-1", "response_format": "verbose_json"})
        assert r.status_code == 200, r.text
        body = r.json()
        print(f"\n8 kHz upload, no language given: {body['language']!r} {body['text']!r}")
        assert body["language"] in ("en", "english") and not foreign_script(body["text"])
    finally:
        live.stop()
