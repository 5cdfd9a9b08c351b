"""Streaming ASR socket: partials and finals from real speech, resampling, bad input, disconnects."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import soxr
import websockets

from asr.textnorm import normalize, word_error_rate
from tests.conftest import DATA, load_transcripts, read_audio, run

CLIP = DATA / "librivox" / "sense_and_sensibility_01_austen_64kb-0870.wav"  # 7.1 s
CLIP_REF = ("and mister john dashwood had then leisure to consider how much there might be "
            "prudently in his power to do for them")


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def stream_file(url: str, audio: np.ndarray, rate: int, frame_ms: int = 20, speed: float = 4.0,
                      tail_silence_s: float = 1.0) -> list[dict]:
    """Send audio in `frame_ms` frames at `speed`× real time, then silence, then `end`; collect events."""
    audio = np.concatenate([np.zeros(int(0.3 * rate), np.float32), audio, np.zeros(int(tail_silence_s * rate), np.float32)])
    step = int(rate * frame_ms / 1000)
    events: list[dict] = []
    async with websockets.connect(url, max_size=None) as ws:
        events.append(json.loads(await ws.recv()))

        async def reader():
            async for message in ws:
                events.append(json.loads(message))

        task = asyncio.create_task(reader())
        for i in range(0, len(audio), step):
            await ws.send(pcm16(audio[i : i + step]))
            await asyncio.sleep(frame_ms / 1000 / speed)
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(task, timeout=60)
    return events


def test_stream_real_speech_gives_partials_and_a_final(server):
    audio, rate = read_audio(CLIP)
    events = run(stream_file(server.ws_url + "/v1/asr/stream?sample_rate=16000", audio, rate, speed=1.5))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "ready" and kinds[-1] == "done"
    assert "speech_started" in kinds and "partial" in kinds
    finals = [e for e in events if e["type"] == "final"]
    assert finals, kinds
    assert word_error_rate([CLIP_REF], [" ".join(f["text"] for f in finals)]) < 0.1
    # Partials of a segment come before its final; times are ordered and inside the stream.
    for f in finals:
        idx_final = events.index(f)
        assert all(events.index(p) < idx_final for p in events
                   if p["type"] == "partial" and p["segment_id"] == f["segment_id"])
        assert 0 <= f["start"] < f["end"] <= 0.3 + len(audio) / rate + 1.0
    assert [f["start"] for f in finals] == sorted(f["start"] for f in finals)
    assert events[-1]["segments"] == len(finals)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_declared_sample_rate_is_resampled(server, rate):
    # Six real clips (75 words), so that one utterance's model noise cannot decide the test; a missing or
    # wrong resampler turns every clip into nonsense or silence.
    rows = [(path, ref) for path, ref in load_transcripts()
            if "librivox" in str(path) or path.name == "goforward.wav"]
    refs, hyps = [], []
    for path, ref in rows:
        audio, src = read_audio(path)
        audio = soxr.resample(audio, src, rate).astype(np.float32)
        events = run(stream_file(server.ws_url + f"/v1/asr/stream?sample_rate={rate}&partials=false", audio,
                                 rate, speed=20))
        assert "partial" not in [e["type"] for e in events]
        refs.append(ref)
        hyps.append(" ".join(e["text"] for e in events if e["type"] == "final"))
        assert hyps[-1], f"{path.name}: no final at {rate} Hz"
    wer = word_error_rate(refs, hyps)
    print(f"\nstreamed at {rate} Hz: WER {wer:.2%} over {len(rows)} clips")
    for ref, hyp in zip(refs, hyps):
        if normalize(ref) != normalize(hyp):
            print(f"  ref: {normalize(ref)}\n  hyp: {normalize(hyp)}")
    assert len(rows) == 6 and wer <= 0.1


def test_two_utterances_give_two_finals_in_order(server):
    a, rate = read_audio(DATA / "commands" / "goforward.wav")
    b, _ = read_audio(DATA / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav")
    audio = np.concatenate([a, np.zeros(rate, np.float32), b])
    events = run(stream_file(server.ws_url + "/v1/asr/stream?partials=false", audio, rate, speed=10))
    finals = [normalize(e["text"]) for e in events if e["type"] == "final"]
    assert len(finals) == 2 and finals[0] == "go forward ten meters", finals
    # The second clip's exact words move with where the VAD cut it and the window it is encoded in ("ill
    # disposed" / "ill sposed"); what this test pins is two finals, in order, each of its own clip.
    assert word_error_rate(["he was not an ill disposed young man"], [finals[1]]) <= 0.15, finals


def test_silence_gives_no_segments(server):
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16000 * 2) * 0.003).astype(np.float32)
    events = run(stream_file(server.ws_url + "/v1/asr/stream", noise, 16000, speed=20))
    assert [e["type"] for e in events] == ["ready", "done"]


def test_bad_messages_get_errors_and_the_session_continues(server):
    async def scenario():
        async with websockets.connect(server.ws_url + "/v1/asr/stream", max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send("{not json")
            await ws.send(json.dumps({"type": "dance"}))
            await ws.send(json.dumps(["a list"]))
            await ws.send(b"\x01\x02\x03")  # odd length
            await ws.send(b"\0" * (server.app.state.settings.max_ws_message_bytes + 2))
            codes = [json.loads(await ws.recv())["code"] for _ in range(5)]
            audio, rate = read_audio(DATA / "commands" / "goforward.wav")
            await ws.send(pcm16(np.concatenate([audio, np.zeros(rate // 2, np.float32)])))
            await ws.send(json.dumps({"type": "end"}))
            rest = [json.loads(m) async for m in ws]
            return codes, rest

    codes, rest = run(scenario())
    assert codes == ["invalid_json", "unknown_message", "invalid_json", "invalid_audio", "frame_too_large"]
    assert normalize(" ".join(e["text"] for e in rest if e["type"] == "final")) == "go forward ten meters"
    assert rest[-1]["type"] == "done"


def test_invalid_parameters_are_rejected(server):
    async def scenario():
        async with websockets.connect(server.ws_url + "/v1/asr/stream?sample_rate=999999") as ws:
            event = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return event, closed.value.rcvd.code

    event, code = run(scenario())
    assert event["type"] == "error" and event["code"] == "invalid_parameters" and code == 1008


def test_abrupt_disconnect_frees_the_session(server):
    before = server.gauge("voxline_sessions_active", kind="asr")

    async def scenario():
        audio, rate = read_audio(CLIP)
        ws = await websockets.connect(server.ws_url + "/v1/asr/stream")
        await ws.recv()
        for i in range(0, 3 * rate, 320):
            await ws.send(pcm16(audio[i : i + 320]))
        # Drop the TCP connection without a close handshake, mid-utterance.
        ws.transport.abort()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if server.gauge("voxline_sessions_active", kind="asr") == before:
                return True
        return False

    assert run(scenario())
