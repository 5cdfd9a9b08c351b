"""Smart Turn v3.2 on this CPU: milliseconds per end-of-turn decision, and what it decides on real clips.

`python -m bench.smart_turn` prints:
- the CPU (lscpu's model name) and the ms per decision (features + model, and the model alone), one ORT thread;
- per recording in tests/data: P(complete) of the whole utterance at a 200 ms pause, and the median / max over
  the same audio cut mid-word (the thresholds in realtime.config.SEMANTIC_EAGERNESS come from these);
- per recording: where each eagerness ends the first turn (Silero VAD + Smart Turn, as a session runs them).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import soundfile

from asr.smart_turn import SmartTurn, features
from asr.vad import SileroVAD
from realtime.config import TurnDetection
from realtime.turns import SpeechPaused, SpeechStopped, TurnDetector

RATE = 16000
DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


class _Inline:
    """Decisions at once (offline: audio is fed faster than real time)."""

    def submit(self, fn, *args):
        f: Future = Future()
        f.set_result(fn(*args))
        return f


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def latency(model: SmartTurn, audio: np.ndarray, n: int) -> tuple[float, float]:
    model.probability(audio)  # warm
    t = time.perf_counter()
    for _ in range(n):
        model.probability(audio)
    total = (time.perf_counter() - t) / n * 1000
    feats = features(audio)[None]
    t = time.perf_counter()
    for _ in range(n):
        model.session.run(None, {model._input: feats})
    return total, (time.perf_counter() - t) / n * 1000


def voiced(audio: np.ndarray) -> tuple[np.ndarray, int, int]:
    energy = np.sqrt(np.convolve(audio ** 2, np.ones(320) / 320, "same"))
    idx = np.nonzero(energy > 0.05 * energy.max())[0]
    return energy, int(idx[0]), int(idx[-1])


def full_vs_cuts(model: SmartTurn, audio: np.ndarray) -> tuple[float, float, float, int]:
    pause = np.zeros(int(0.2 * RATE), np.float32)
    energy, first, last = voiced(audio)
    full = model.probability(np.concatenate([audio[:last + 1600], pause]))
    span = last - first
    cuts = [i for i in range(first + int(0.3 * span), first + int(0.9 * span), 1600) if energy[i] > 0.2 * energy.max()]
    probs = [model.probability(np.concatenate([audio[:i], pause])) for i in cuts]
    return full, float(np.median(probs)), float(np.max(probs)), len(probs)


def first_turn_end(model: SmartTurn, audio: np.ndarray, eagerness: str) -> str:
    td = TurnDetection(type="semantic_vad", eagerness=eagerness)
    d = TurnDetector(SileroVAD.shared(), td, 0, turn_model=model, executor=_Inline())
    audio = np.concatenate([audio, np.zeros(3 * RATE, np.float32)])
    pauses = []
    for i in range(0, len(audio), 320):
        for e in d.push(audio[i:i + 320]):
            if isinstance(e, SpeechPaused):
                pauses.append(f"{e.end / RATE:.2f}s:{d.last_probability:.2f}")
            elif isinstance(e, SpeechStopped):
                return f"ends {e.end / RATE:.2f}s (pauses {' '.join(pauses)})"
    return "never ends"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=30, help="decisions timed")
    args = ap.parse_args()
    model = SmartTurn.shared()
    clips = sorted(DATA.glob("*/*.wav"))
    audio0, _ = soundfile.read(clips[0], dtype="float32")
    total, net = latency(model, audio0, args.n)
    print(f"CPU: {cpu_model()}  model: {model.path.name}")
    print(f"ms per decision: {total:.1f} (features + model), {net:.1f} (model alone), 1 thread, n={args.n}")
    print(f"{'clip':34s} {'full':>5s} {'cut med':>7s} {'cut max':>7s}  first turn end by eagerness")
    for path in clips:
        audio, rate = soundfile.read(path, dtype="float32")
        assert rate == RATE, path
        audio = audio[:20 * RATE]
        full, med, top, n = full_vs_cuts(model, audio)
        print(f"{path.parent.name + '/' + path.stem[-14:]:34s} {full:5.2f} {med:7.2f} {top:7.2f}  (n={n})")
        for eagerness in ("high", "medium", "low"):
            print(f"{'':34s}   {eagerness:6s} {first_turn_end(model, audio, eagerness)}")


if __name__ == "__main__":
    main()
