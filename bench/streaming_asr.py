"""Streaming ASR latency: a recording streamed in real time (20 ms frames) to `/v1/asr/stream`.

Ground truth for speech onset and end comes from Silero VAD run offline over the whole file (the same
model, no streaming), so the figures measure the service's reaction time, not VAD disagreement.
For every utterance: first `partial` after its onset, and `final` after its end (wall clock, measured
from the moment the audio at that time position was sent).

The same stream runs twice, one server after the other: finals in the default short utterance window, then
the baseline, Whisper's 30 s window (`asr_utterance_window_s=30`, faster-whisper's own decode).

    python -m bench.streaming_asr [--seconds 10] [--windows 20.4 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
import websockets

from asr.vad import SileroVAD, SpeechSegmenter, VADConfig
from bench.common import DATA, machine, pct, read, start_server, today

FRAME_MS = 20


def offline_segments(audio: np.ndarray, config: VADConfig) -> list[tuple[float, float]]:
    stream, seg = SileroVAD.shared().stream(), SpeechSegmenter(VADConfig(
        threshold=config.threshold, silence_duration_ms=config.silence_duration_ms, prefix_padding_ms=0))
    events = seg.push(stream.feed(np.concatenate([audio, np.zeros(16000, np.float32)])))
    starts = [e.time for e in events if e.kind == "start"]
    ends = [e.time for e in events if e.kind == "end"]
    return list(zip(starts, ends))


async def stream(url: str, audio: np.ndarray) -> tuple[list[tuple[float, dict]], float]:
    events: list[tuple[float, dict]] = []
    step = 16000 * FRAME_MS // 1000
    padded = np.concatenate([audio, np.zeros(16000 * 2, np.float32)])
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()

        async def reader():
            async for message in ws:
                events.append((time.perf_counter(), json.loads(message)))

        task = asyncio.create_task(reader())
        t0 = time.perf_counter()
        for i, start in enumerate(range(0, len(padded), step)):
            # Paced by the stream clock, not by fixed sleeps, so send time never drifts.
            await asyncio.sleep(max(0.0, t0 + i * FRAME_MS / 1000 - time.perf_counter()))
            await ws.send((padded[start : start + step] * 32767).astype("<i2").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(task, 60)
    return events, t0


def run(seconds: float, window_s: float) -> dict:
    audio = read(DATA / "moonshine" / "two_cities.wav")[: int(seconds * 16000)]
    config = VADConfig(silence_duration_ms=400)
    truth = offline_segments(audio, config)
    print(f"streaming ASR: {len(audio) / 16000:.1f}s of two_cities.wav in real time, "
          f"{len(truth)} utterances by offline VAD, finals in a {window_s:g} s window", flush=True)
    server = start_server(asr_utterance_window_s=window_s)
    events, t0 = asyncio.run(stream(server.ws_url + "/v1/asr/stream?silence_ms=400", audio))
    server.stop()
    first_partial, final_lag = [], []
    for onset, end in truth:
        partials = [t for t, e in events if e["type"] == "partial" and e["start"] <= onset + 0.35 and e["end"] > onset]
        finals = [t for t, e in events if e["type"] == "final" and abs(e["end"] - end) < 0.5]
        if partials:
            first_partial.append(min(partials) - (t0 + onset))
        if finals:
            final_lag.append(min(finals) - (t0 + end))
    finals = [e for _, e in events if e["type"] == "final"]
    return {"window": window_s, "seconds": len(audio) / 16000, "utterances": len(truth), "finals": len(finals),
            "first_partial": first_partial, "final_lag": final_lag,
            "text": " ".join(e["text"] for e in finals)}


def markdown(runs: list[dict]) -> str:
    r = runs[0]
    lines = [f"### Streaming ASR latency ({today()}, {machine()})",
             f"`two_cities.wav`, first {r['seconds']:.1f}s, streamed in real time in 20 ms PCM16 frames to "
             f"`/v1/asr/stream` (Whisper base, silence 400 ms); {r['utterances']} utterances by offline VAD. "
             f"One server per row, same stream; the window is the one each final is encoded in.", "",
             "| final window | first partial after onset: median / max | final after end of speech: median / max "
             "| finals |", "|---|---|---|---|"]
    for r in runs:
        fp, fl = r["first_partial"], r["final_lag"]
        lines.append(f"| {r['window']:g} s | {pct(fp, 50):.2f} / {max(fp):.2f} s | {pct(fl, 50):.2f} / "
                     f"{max(fl):.2f} s | {r['finals']} |")
    lines.append("| goal | ≤ 1.5 s | ≤ 1.0 s | |")
    if len(runs) > 1:
        base, new = runs[-1]["final_lag"], runs[0]["final_lag"]
        lines += ["", f"Final latency ratio, {runs[-1]['window']:g} s window / {runs[0]['window']:g} s window: "
                  f"{pct(base, 50) / pct(new, 50):.2f}× at the median."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--windows", type=float, nargs="+", default=[20.4, 30.0],
                        help="utterance windows to run, the last one is the baseline")
    args = parser.parse_args(argv)
    runs = []
    for window in args.windows:
        runs.append(run(args.seconds, window))
        print(f"finals ({window:g} s):", runs[-1]["text"], flush=True)
    print(markdown(runs))


if __name__ == "__main__":
    main()
