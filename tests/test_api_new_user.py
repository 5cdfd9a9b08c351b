"""What a new user meets with the official `openai` SDK and plain HTTP (issue 20, items 2–5), on a live server.

2. FLAC both ways: a streamed FLAC (no length in its header, as `ffmpeg -i a.wav -f flac -` writes it) is
   transcribed, and `/v1/audio/speech` FLAC is readable by soundfile and by our own transcription endpoint.
3. `stream=true` transcription sends each segment as it is decoded, and `usage` as OpenAI documents it.
4. `/v1/models/{id}` answers for every listed id and alias; the list holds every name the routes accept and
   no random-weight test model; `gpt-4o`/`gpt-4o-mini` name the default chat model.
5. Clear errors: unknown `language` (HTTP and the ASR socket's handshake), `sample_rate=abc`, `GET /twilio/voice`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
import xml.etree.ElementTree as ET

import httpx
import numpy as np
import openai
import pytest
import soundfile
import websockets
from twilio.request_validator import RequestValidator

from asr.textnorm import normalize
from tests.conftest import DATA, run

CLIP = DATA / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav"  # "he was not an ill disposed young man"


def _streamed_flac(audio: np.ndarray, rate: int) -> bytes:
    """FLAC as FFmpeg writes it to a pipe (`ffmpeg -f flac -`): the muxer cannot seek back, so STREAMINFO's
    total-samples field stays 0 ("unknown"). Written with PyAV (FFmpeg's library) into a non-seekable sink."""
    import av

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def write(self, b) -> int:
            self.data += bytes(b)
            return len(b)

    pipe = Pipe()
    with av.open(pipe, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return bytes(pipe.data)


def _flac_total_samples(data: bytes) -> int:
    """STREAMINFO's 36-bit total sample count (0 = unknown), from the first metadata block."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    info = data[8:8 + 34]
    return ((info[13] & 0x0F) << 32) | int.from_bytes(info[14:18], "big")


# ---- 2. FLAC both ways ------------------------------------------------------------------------------------
def test_streamed_flac_without_a_length_is_transcribed(server):
    audio, rate = soundfile.read(CLIP, dtype="float32")
    flac = _streamed_flac(audio, rate)
    assert _flac_total_samples(flac) == 0  # what the reporter sent: "length unknown"
    r = httpx.post(server.base_url + "/v1/audio/transcriptions", timeout=120,
                   files={"file": ("piped.flac", flac, "audio/flac")}, data={"model": "whisper-1"})
    assert r.status_code == 200, r.text
    assert "young man" in normalize(r.json()["text"])


def test_speech_flac_is_read_by_soundfile_and_by_our_transcriber(openai_client):
    text = "Please open the window before dinner."
    data = openai_client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                             response_format="flac").read()
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")  # unreadable before: length unknown
    assert rate == 22050 and 1.0 < len(audio) / rate < 6.0
    assert _flac_total_samples(data) == len(audio)
    result = openai_client.audio.transcriptions.create(model="whisper-1", file=("speech.flac", data, "audio/flac"))
    assert "open the window" in normalize(result.text), result.text


# ---- 3. streamed transcription: incremental, with usage ----------------------------------------------------
def _long_recording(min_seconds: float = 65.0) -> np.ndarray:
    """Real speech at 16 kHz, > 2 Whisper windows: the librivox and moonshine clips (resampled), repeated."""
    from audio_server.audio_io import resample

    clips = []
    for path in sorted((DATA / "librivox").glob("*.wav")) + sorted((DATA / "moonshine").glob("*.wav")):
        audio, rate = soundfile.read(path, dtype="float32")
        clips += [resample(audio if audio.ndim == 1 else audio.mean(axis=1), rate, 16000), np.zeros(8000, np.float32)]
    one = np.concatenate(clips)
    return np.tile(one, int(np.ceil(min_seconds * 16000 / len(one))))


def _wav(audio: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def test_streamed_transcription_is_incremental_and_reports_usage(server, openai_client):
    audio = _long_recording()
    wav = _wav(audio)
    t0 = time.perf_counter()
    arrivals: list[tuple[float, dict]] = []
    with httpx.stream("POST", server.base_url + "/v1/audio/transcriptions", timeout=300,
                      files={"file": ("long.wav", wav, "audio/wav")},
                      data={"model": "whisper-1", "stream": "true"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.perf_counter() - t0, json.loads(line[6:])))
    deltas = [t for t, e in arrivals if e["type"] == "transcript.text.delta"]
    done_at, done = arrivals[-1]
    assert done["type"] == "transcript.text.done" and len(deltas) >= 3
    print(f"\n{len(audio) / 16000:.0f} s of audio: first delta at {deltas[0]:.2f} s, done at {done_at:.2f} s")
    # Three 30 s windows: the first window's segments come once it is decoded, not with the last one.
    assert deltas[0] < 0.8 * done_at, (deltas[0], done_at)
    usage = done["usage"]
    details = usage["input_token_details"]
    assert usage["type"] == "tokens" and details["audio_tokens"] == int(np.ceil(len(audio) / 16000 * 50))
    assert details["text_tokens"] == 0 and usage["input_tokens"] == details["audio_tokens"]
    assert usage["output_tokens"] > len(done["text"].split()) * 0.8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    # The SDK parses it, and with a prompt the text tokens are counted; a plain request gives duration usage.
    with open(CLIP, "rb") as fh:
        events = list(openai_client.audio.transcriptions.create(model="whisper-1", file=fh, stream=True,
                                                                prompt="Austen, Sense and Sensibility."))
    assert events[-1].usage is not None and events[-1].usage.input_token_details.text_tokens >= 5
    with open(CLIP, "rb") as fh:
        plain = openai_client.audio.transcriptions.create(model="whisper-1", file=fh)
    assert plain.usage.type == "duration" and plain.usage.seconds == 3  # 2.99 s, whole seconds as OpenAI bills


# ---- 4. models -----------------------------------------------------------------------------------------
def test_every_listed_model_and_alias_can_be_retrieved(openai_client):
    listed = {m.id: m for m in openai_client.models.list()}
    for name in ("whisper-1", "gpt-4o-transcribe", "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "piper-joe",
                 "gpt-4o", "gpt-4o-mini", "gpt-realtime", "whisper-base", "qwen2.5-coder-0.5b-instruct"):
        assert name in listed, name
    assert "tiny-vlm-random" not in listed  # random weights: served by name for tests, not offered
    for model_id in listed:
        got = openai_client.models.retrieve(model_id)
        assert got.id == model_id and got.object == "model"
    assert openai_client.models.retrieve("whisper-1").model_extra["alias_of"] == "whisper-base"
    assert openai_client.models.retrieve("tiny-vlm-random").id == "tiny-vlm-random"  # accepted, so retrievable
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.models.retrieve("whisper-9")
    assert missing.value.body["code"] == "model_not_found"


def test_speech_accepts_tts_1_hd(openai_client):
    data = openai_client.audio.speech.create(model="tts-1-hd", voice="alloy", input="Hi.", response_format="wav")
    assert soundfile.read(io.BytesIO(data.read()))[0].size > 0


def test_gpt_4o_names_the_default_chat_model(openai_client):
    from runtime.llm import default_model

    for alias in ("gpt-4o", "gpt-4o-mini"):
        r = openai_client.chat.completions.create(model=alias, max_tokens=2, temperature=0,
                                                  messages=[{"role": "user", "content": "Say hi."}])
        assert r.model == default_model()  # the response names the model that answered
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-9", max_tokens=2, messages=[{"role": "user", "content": "x"}])


# ---- 5. errors ------------------------------------------------------------------------------------------
def test_unknown_language_is_a_400_naming_it(openai_client):
    with open(CLIP, "rb") as fh:
        with pytest.raises(openai.BadRequestError) as bad:
            openai_client.audio.transcriptions.create(model="whisper-1", file=fh, language="xx")
    assert bad.value.body["param"] == "language" and "'xx'" in bad.value.body["message"]
    with open(CLIP, "rb") as fh:  # the server is fine, and a real code works
        assert "young man" in normalize(openai_client.audio.transcriptions.create(
            model="whisper-1", file=fh, language="en").text)


async def _handshake(url: str) -> tuple[dict, int | None]:
    """The socket's first event and, if the server then closes, its close code."""
    async with websockets.connect(url) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 60))
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as closed:
            return first, closed.rcvd.code if closed.rcvd else None
        return first, None


@pytest.mark.parametrize("query, says", [
    ("language=xx", "unknown language 'xx'"),
    ("sample_rate=abc", "sample_rate must be an integer between 8000 and 48000 (got 'abc')"),
    ("silence_ms=soon", "silence_ms must be an integer"),
])
def test_asr_socket_refuses_bad_parameters_at_the_handshake(server, query, says):
    event, code = run(_handshake(server.ws_url + "/v1/asr/stream?" + query))
    assert event["type"] == "error" and event["code"] == "invalid_parameters" and code == 1008
    assert says in event["message"] and "invalid literal" not in event["message"]


def test_tts_socket_sample_rate_abc_is_a_clear_error(server):
    event, code = run(_handshake(server.ws_url + "/v1/tts/stream?sample_rate=abc"))
    assert event["type"] == "error" and code == 1008
    assert "sample_rate must be an integer" in event["message"] and "invalid literal" not in event["message"]


TWILIO_TOKEN = "tw-secret-20"


@pytest.fixture(scope="module")
def signed(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    live = LiveServer(create_app(dataclasses.replace(hub.settings, twilio_auth_token=TWILIO_TOKEN), hub)).start()
    yield live
    live.stop()


def _stream_parameters(twiml: str) -> dict[str, str]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def test_twilio_voice_webhook_configured_as_get(server, signed):
    call = "CA" + "0" * 31 + "1"
    query = f"CallSid={call}&From=%2B15550100&voice=alloy"
    # Open loopback server: GET answers TwiML as POST does.
    r = httpx.get(f"{server.base_url}/twilio/voice?{query}")
    assert r.status_code == 200 and "<Stream" in r.text, r.text
    # Signed server: Twilio signs a GET's URL with its query and no body parameters.
    url = f"{signed.base_url}/twilio/voice?{query}"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, {})
    r = httpx.get(url, headers={"X-Twilio-Signature": signature})
    assert r.status_code == 200, r.text
    params = _stream_parameters(r.text)
    assert params["callSid"] == call and params["voice"] == "alloy" and params.get("token")
    # The POST rules hold for GET: a replay, a missing or wrong signature, a changed query are refused.
    assert httpx.get(url, headers={"X-Twilio-Signature": signature}).json()["error"]["code"] == "replayed_request"
    assert httpx.get(url).status_code == 403
    tampered = url.replace("voice=alloy", "voice=onyx")
    assert httpx.get(tampered, headers={"X-Twilio-Signature": signature}).status_code == 403
    other = "CA" + "0" * 31 + "2"
    fresh = f"{signed.base_url}/twilio/voice?CallSid={other}"
    ok = httpx.get(fresh, headers={"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(fresh, {})})
    assert ok.status_code == 200 and _stream_parameters(ok.text)["callSid"] == other
