"""/v1/audio/* through the official openai SDK and raw HTTP, including bad input."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import soundfile

from asr.textnorm import normalize, word_error_rate
from audio_server.audio_io import decode_audio
from tests.conftest import DATA

CLIP = DATA / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav"  # "he was not an ill disposed young man"


def test_openai_sdk_transcribes_a_real_recording(openai_client):
    with open(CLIP, "rb") as fh:
        result = openai_client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert word_error_rate(["he was not an ill disposed young man"], [result.text]) <= 0.13


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt", "verbose_json"])
def test_response_formats(openai_client, fmt):
    with open(DATA / "commands" / "goforward.wav", "rb") as fh:
        result = openai_client.audio.transcriptions.create(model="whisper-1", file=fh, response_format=fmt)
    if fmt == "verbose_json":
        assert normalize(result.text) == "go forward ten meters"
        assert result.duration == pytest.approx(2.786, abs=0.01)
        assert result.segments and result.segments[0].end <= result.duration + 0.05
    else:
        text = result if isinstance(result, str) else result.text
        assert "forward" in text.lower()
        if fmt == "srt":
            assert text.startswith("1\n00:00:0") and " --> " in text
        if fmt == "vtt":
            assert text.startswith("WEBVTT")


def test_word_timestamps_are_ordered(openai_client):
    with open(CLIP, "rb") as fh:
        result = openai_client.audio.transcriptions.create(
            model="whisper-1", file=fh, response_format="verbose_json", timestamp_granularities=["word"])
    starts = [w.start for w in result.words]
    assert len(result.words) >= 6 and starts == sorted(starts)
    assert all(w.end >= w.start for w in result.words)


def test_streaming_transcription_sse(openai_client):
    with open(DATA / "moonshine" / "beckett.wav", "rb") as fh:
        stream = openai_client.audio.transcriptions.create(model="whisper-1", file=fh, stream=True)
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and "transcript.text.delta" in kinds
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert normalize(deltas) == normalize(events[-1].text)
    assert "fail better" in normalize(events[-1].text)


def test_other_containers_are_decoded(openai_client, tmp_path):
    audio, rate = soundfile.read(CLIP, dtype="float32")
    flac = tmp_path / "clip.flac"
    soundfile.write(flac, audio, rate)
    with open(flac, "rb") as fh:
        result = openai_client.audio.transcriptions.create(model="whisper-base", file=fh)
    assert "young man" in normalize(result.text)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "aac", "pcm"])
def test_openai_sdk_synthesises_speech(openai_client, fmt):
    response = openai_client.audio.speech.create(model="tts-1", voice="alloy", input="Hello from voxline.",
                                                 response_format=fmt)
    data = response.read()
    if fmt == "pcm":
        audio = np.frombuffer(data, "<i2").astype(np.float32) / 32768
        seconds = len(audio) / 24000
    else:
        audio = decode_audio(data, 16000)
        seconds = len(audio) / 16000
    assert 0.6 < seconds < 4.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.01  # not silence


def test_speech_is_streamed_in_chunks(openai_client):
    text = "This is the first sentence. Here is a second one. And finally a third sentence to speak."
    with openai_client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="joe", input=text, response_format="pcm") as response:
        chunks = [c for c in response.iter_bytes() if c]
    assert len(chunks) >= 3  # one or more per sentence, not one blob at the end
    assert sum(len(c) for c in chunks) / 2 / 24000 > 3.0


def test_speed_changes_duration(openai_client):
    def seconds(speed):
        data = openai_client.audio.speech.create(model="tts-1", voice="joe", input="Speed test sentence here.",
                                                 response_format="pcm", speed=speed).read()
        return len(data) / 2 / 24000

    assert seconds(2.0) < 0.7 * seconds(1.0)


# ---- bad input ---------------------------------------------------------------------------------------
def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code", "param"}
    return body["error"]


def test_transcription_bad_inputs(server):
    url = server.base_url + "/v1/audio/transcriptions"
    with httpx.Client(timeout=60) as http:
        _error(http.post(url, content=b"{}", headers={"content-type": "application/json"}), 415)
        err = _error(http.post(url, files={"file": ("x.wav", b"not audio at all" * 10, "audio/wav")}), 400)
        assert "decode" in err["message"]
        _error(http.post(url, files={"file": ("x.wav", b"", "audio/wav")}), 400)
        _error(http.post(url, data={"model": "whisper-1"}, files={"other": ("a", b"x")}), 400)
        too_big = b"\0" * (server.app.state.settings.max_upload_bytes + 10)
        _error(http.post(url, files={"file": ("big.wav", too_big, "audio/wav")}), 413)
        with open(CLIP, "rb") as fh:
            wav = fh.read()
        err = _error(http.post(url, data={"model": "nope"}, files={"file": ("a.wav", wav)}), 400)
        assert "whisper" in err["message"]
        _error(http.post(url, data={"response_format": "xml"}, files={"file": ("a.wav", wav)}), 400)
        short = io.BytesIO()
        soundfile.write(short, np.zeros(100, np.float32), 16000, format="WAV")
        _error(http.post(url, files={"file": ("s.wav", short.getvalue())}), 400)


def test_speech_bad_inputs(server):
    url = server.base_url + "/v1/audio/speech"
    with httpx.Client(timeout=60) as http:
        _error(http.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
        _error(http.post(url, content=b"input=hi", headers={"content-type": "text/plain"}), 415)
        _error(http.post(url, json={"model": "tts-1", "input": ""}), 400)
        assert _error(http.post(url, json={"model": "tts-1", "input": "hi", "voice": "darth"}), 400)["param"] == "voice"
        _error(http.post(url, json={"model": "tts-1", "input": "hi", "response_format": "ogg"}), 400)
        _error(http.post(url, json={"model": "tts-1", "input": "hi", "speed": 9}), 400)
        _error(http.post(url, json={"model": "tts-9", "input": "hi"}), 400)
        _error(http.post(url, json={"model": "tts-1", "input": "x" * 5000}), 400)
        # The server is still fine afterwards.
        assert http.post(url, json={"model": "tts-1", "input": "Still here.", "response_format": "wav"}).status_code == 200


def test_health_models_metrics(server):
    with httpx.Client(timeout=30) as http:
        assert http.get(server.base_url + "/healthz").json()["status"] == "ok"
        ids = {m["id"] for m in http.get(server.base_url + "/v1/models").json()["data"]}
        assert {"whisper-base", "whisper-tiny.en", "piper-joe", "silero-vad"} <= ids
        text = http.get(server.base_url + "/metrics").text
        assert "voxline_http_requests_total" in text and "voxline_sessions_active" in text


def test_openai_sdk_lists_models(openai_client):
    assert "whisper-1" in {m.id for m in openai_client.models.list()}
