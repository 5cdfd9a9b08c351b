"""Streaming TTS socket: audio starts before the text is complete, done accounting, cancel, bad input."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import websockets

from asr.textnorm import normalize
from tests.conftest import run


async def _collect_until(ws, kind: str) -> tuple[list[bytes], list[dict]]:
    audio, events = [], []
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout=60)
        if isinstance(message, bytes):
            audio.append(message)
            continue
        event = json.loads(message)
        events.append(event)
        if event["type"] == kind:
            return audio, events


def test_audio_starts_before_the_text_is_finished(server):
    async def scenario():
        async with websockets.connect(server.ws_url + "/v1/tts/stream?voice=joe") as ws:
            ready = json.loads(await ws.recv())
            for piece in ["The first ", "sentence is ", "complete. ", "The second one"]:
                await ws.send(json.dumps({"type": "text", "text": piece}))
            # Only the first sentence is complete: its audio must arrive with no `end` sent.
            first = await asyncio.wait_for(ws.recv(), timeout=30)
            await ws.send(json.dumps({"type": "text", "text": " is still being typed."}))
            await ws.send(json.dumps({"type": "end"}))
            audio, events = await _collect_until(ws, "done")
            return ready, first, audio, events

    ready, first, audio, events = run(scenario())
    assert ready["sample_rate"] == 22050 and isinstance(first, bytes) and len(first) > 0
    samples = (len(first) + sum(len(a) for a in audio)) // 2
    done = events[-1]
    assert done["samples"] == samples and abs(done["duration"] - samples / 22050) < 1e-3
    sentences = [e["text"] for e in events if e["type"] == "sentence"]
    assert sentences[-1] == "The second one is still being typed." and done["sentences"] == 2


def test_output_sample_rate_and_roundtrip(server, hub):
    async def scenario():
        async with websockets.connect(server.ws_url + "/v1/tts/stream?sample_rate=16000") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "text", "text": "The capital of France is Paris."}))
            await ws.send(json.dumps({"type": "end"}))
            return await _collect_until(ws, "done")

    audio, events = run(scenario())
    pcm = np.frombuffer(b"".join(audio), "<i2").astype(np.float32) / 32768
    assert events[-1]["sample_rate"] == 16000
    text = normalize(hub.asr().transcribe(pcm).text)
    assert "capital" in text and "paris" in text  # Piper's "France is" often comes back as "Francis"


def test_cancel_drops_queued_text(server):
    async def scenario():
        async with websockets.connect(server.ws_url + "/v1/tts/stream") as ws:
            await ws.recv()
            long_text = " ".join(f"This is sentence number {i}." for i in range(30))
            await ws.send(json.dumps({"type": "text", "text": long_text + " "}))
            await asyncio.wait_for(ws.recv(), timeout=30)  # audio has started
            await ws.send(json.dumps({"type": "cancel"}))
            await ws.send(json.dumps({"type": "end"}))
            return await _collect_until(ws, "done")

    audio, events = run(scenario())
    assert "cancelled" in [e["type"] for e in events]
    assert events[-1]["sentences"] < 10  # far fewer than the 30 queued


def test_bad_messages_get_errors_and_the_session_continues(server):
    async def scenario():
        async with websockets.connect(server.ws_url + "/v1/tts/stream") as ws:
            await ws.recv()
            for bad in ["{oops", json.dumps({"type": "sing"}), json.dumps({"type": "text", "text": 5})]:
                await ws.send(bad)
            await ws.send(b"\x00\x01")
            codes = [json.loads(await ws.recv())["code"] for _ in range(4)]
            await ws.send(json.dumps({"type": "text", "text": "Still working."}))
            await ws.send(json.dumps({"type": "end"}))
            audio, events = await _collect_until(ws, "done")
            return codes, audio, events

    codes, audio, events = run(scenario())
    assert codes == ["invalid_json", "unknown_message", "invalid_text", "unexpected_binary"]
    assert events[-1]["samples"] > 10000 and audio


def test_unknown_voice_is_rejected(server):
    async def scenario():
        async with websockets.connect(server.ws_url + "/v1/tts/stream?voice=nobody") as ws:
            return json.loads(await ws.recv())

    event = run(scenario())
    assert event["code"] == "invalid_parameters" and "voice" in event["message"]


def test_disconnect_mid_synthesis_frees_the_session(server):
    before = server.gauge("voxline_sessions_active", kind="tts")

    async def scenario():
        ws = await websockets.connect(server.ws_url + "/v1/tts/stream")
        await ws.recv()
        await ws.send(json.dumps({"type": "text", "text": "One sentence here. " * 20}))
        await ws.recv()
        ws.transport.abort()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if server.gauge("voxline_sessions_active", kind="tts") == before:
                return True
        return False

    assert run(scenario())
