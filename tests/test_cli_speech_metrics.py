"""Issue 20, items 6-8: the CLI as a user runs it (subprocess), speech text normalisation, `speed`, the TTS
socket's `done` after a cancel, empty input refused, and the LLM / HTTP latency metrics."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import soundfile
import websockets

from tests.conftest import run
from tts.text_normalize import normalize_for_speech

ROOT = Path(__file__).resolve().parents[1]
WAV = ROOT / "tests" / "data" / "commands" / "goforward.wav"


def _voxline(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audio_server.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# --- item 6: the CLI ------------------------------------------------------------------------------------

def test_speak_writes_mp3_and_refuses_unknown_formats(tmp_path):
    out = tmp_path / "out.mp3"
    done = _voxline("speak", "Hello there.", "-o", str(out))
    assert done.returncode == 0, done.stderr
    audio, rate = soundfile.read(out) if out.stat().st_size else (None, 0)
    assert audio is not None and len(audio) / rate > 0.3
    bad = _voxline("speak", "Hello.", "-o", str(tmp_path / "out.ogg"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and ".mp3" in bad.stderr and ".wav" in bad.stderr


@pytest.mark.parametrize("text", ["", "   ", "🍕😀"])
def test_speak_refuses_text_with_nothing_to_say(tmp_path, text):
    out = tmp_path / "out.wav"
    done = _voxline("speak", text, "-o", str(out))
    assert done.returncode == 2 and "nothing to speak" in done.stderr and "RTF" not in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", ["transcribe", "pipeline"])
def test_a_missing_input_file_is_one_line_and_exit_2(tmp_path, command):
    done = _voxline(command, str(tmp_path / "nope.wav"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"voxline {command}: no such file: {tmp_path / 'nope.wav'}"


def test_transcribe_prints_no_library_info_lines():
    done = _voxline("transcribe", str(WAV), "--model", "whisper-tiny.en")
    assert done.returncode == 0, done.stderr
    assert "go forward" in done.stdout.lower()
    assert "INFO" not in done.stderr and "Processing audio" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # the timing line only


def test_serve_banner_names_the_voice_chat_page():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VOXLINE_LLM_MODEL": "smollm2-135m-instruct"}
    proc = subprocess.Popen([sys.executable, "-m", "audio_server.cli", "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, lines = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Voice chat page:" in line:
                break
        assert any(f"Voice chat page: http://127.0.0.1:{port}/" in line for line in lines), "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- item 7: speech text --------------------------------------------------------------------------------

NORMALISED = [
    ("3/4/2025", "March fourth, twenty twenty-five"),
    ("Meet at 10:30am.", "Meet at ten thirty a m."),
    ("9:05 p.m. tomorrow", "nine oh five p m tomorrow"),
    ("at 10:00", "at ten o'clock"),
    ("7pm", "seven p m"),
    ("It costs $4.50.", "It costs four dollars and fifty cents."),
    ("$1", "one dollar"),
    ("$0.99", "ninety-nine cents"),
    ("$1,200", "one thousand two hundred dollars"),
    ("$1.5 million", "one point five million dollars"),
    ("£20", "twenty pounds"),
    ("Mr. Smith vs. Dr. Jones", "Mister Smith versus Doctor Jones"),
    ("e.g. this", "for example this"),
    ("🍕🍕😀 pizza time", "pizza time"),
    ("I 👍🏽 it", "I it"),
    ("the 1st and 22nd", "the first and twenty-second"),
    ("50% off", "fifty percent off"),
    ("pi is 3.14", "pi is three point one four"),
    ("-5 degrees", "minus five degrees"),
    ("in 1999 and 2005", "in nineteen ninety-nine and two thousand five"),
    ("1/2 cup", "one half cup"),
    ("100 km", "one hundred kilometers"),
    ("30°C", "thirty degrees Celsius"),
    ("2025-03-04", "March fourth, twenty twenty-five"),
    ("R&D", "R and D"),
    ("42", "forty-two"),
    ("   ", ""),
    ("😀", ""),
]


@pytest.mark.parametrize(("text", "spoken"), NORMALISED)
def test_text_is_normalised_for_speech(text, spoken):
    assert normalize_for_speech(text) == spoken


def test_speed_is_proportional(hub):
    from tts.piper_tts import SpeechOptions

    tts = hub.tts()
    text = "Please call me back at your earliest convenience, because the meeting was moved to Thursday."
    base = len(tts.synthesize_all(text, SpeechOptions(speed=1.0)))
    for speed in (0.5, 2.0):
        ratio = len(tts.synthesize_all(text, SpeechOptions(speed=speed))) / base
        assert abs(ratio * speed - 1) < 0.1, (speed, ratio)


def test_speech_route_refuses_whitespace_input(server):
    for text in ("   ", "🍕"):
        r = httpx.post(server.base_url + "/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": "alloy"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input", r.text
    ok = httpx.post(server.base_url + "/v1/audio/speech",
                    json={"model": "tts-1", "input": "Fine.", "response_format": "wav"}, timeout=60)
    assert ok.status_code == 200 and len(ok.content) > 10000


async def _until(ws, kind: str) -> tuple[int, list[dict]]:
    samples, events = 0, []
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout=60)
        if isinstance(message, bytes):
            samples += len(message) // 2
            continue
        events.append(json.loads(message))
        if events[-1]["type"] == kind:
            return samples, events


def test_tts_done_after_cancel_counts_only_the_new_request(server):
    async def scenario():
        async with websockets.connect(server.ws_url + "/v1/tts/stream") as ws:
            await ws.recv()
            long_text = " ".join(f"This is sentence number {i}." for i in range(20))
            await ws.send(json.dumps({"type": "text", "text": long_text + " "}))
            await asyncio.wait_for(ws.recv(), timeout=30)  # audio of the first sentence has started
            await ws.send(json.dumps({"type": "cancel"}))
            await _until(ws, "cancelled")
            for piece in ("Second request.", "It has two sentences."):  # `flush`: one chunk each
                await ws.send(json.dumps({"type": "text", "text": piece}))
                await ws.send(json.dumps({"type": "flush"}))
            await ws.send(json.dumps({"type": "end"}))
            samples, events = await _until(ws, "done")
            # whitespace only: an error, and still a `done` (every `end` gets one)
            await ws.send(json.dumps({"type": "text", "text": "   "}))
            await ws.send(json.dumps({"type": "end"}))
            _, empty = await _until(ws, "done")
            return samples, events, empty

    samples, events, empty = run(scenario())
    sentences = [e for e in events if e["type"] == "sentence"]
    new = [e for e in sentences if e["text"] in ("Second request.", "It has two sentences.")]
    done = events[-1]
    assert [e["index"] for e in new] == [0, 1], events  # indexes restart for the new request
    # audio of the cancelled request that was still in flight is not in this `done`
    # audio is counted from `cancelled` on, so a trailing part of the cancelled request may be in `samples`
    assert done["sentences"] == 2 and 0.9 * samples < done["samples"] <= samples
    assert [e.get("code") for e in empty if e["type"] == "error"] == ["nothing_to_speak"]
    assert empty[-1]["samples"] == 0


# --- item 8: metrics --------------------------------------------------------------------------------------

def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()) or not want:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_cover_the_llm_and_http_latency(server):
    model = "smollm2-135m-instruct"
    r = httpx.post(server.base_url + "/v1/chat/completions", timeout=120,
                   json={"model": model, "max_tokens": 16, "temperature": 0,
                         "messages": [{"role": "user", "content": "Say hello."}]})
    assert r.status_code == 200, r.text
    tokens = r.json()["usage"]["completion_tokens"]
    text = httpx.get(server.base_url + "/metrics").text
    assert _metric(text, "voxline_llm_generated_tokens_total", model=model) >= tokens > 0
    assert _metric(text, "voxline_llm_time_to_first_token_seconds_count", model=model) >= 1
    assert _metric(text, "voxline_llm_decode_tokens_per_second_count", model=model) >= 1
    assert _metric(text, "voxline_llm_slots", model=model) >= 1
    assert 'voxline_llm_requests{model="%s",state="waiting"}' % model in text
    assert _metric(text, "voxline_http_request_duration_seconds_count", route="/v1/chat/completions") >= 1
