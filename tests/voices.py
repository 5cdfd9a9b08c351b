"""Speech in more than one voice, for tests that must not hang on one voice's exact words.

- `piper[@speed]`: the service's own Piper voice (en_US joe), at a speaking rate (1.0 = its own);
- `espeak:<voice>@<wpm>`: espeak-ng (Debian package `espeak-ng`, installed by `make test`), other accents.

A set of (text, voice) cases is checked as a set ("at least N of M understood"), never clip by clip: which
clip of a borderline set Whisper gets right can differ between CPUs (float rounding of their int8 kernels).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import numpy as np
import soundfile

from realtime.audio import StreamResampler

ESPEAK = shutil.which("espeak-ng")


def espeak_available() -> bool:
    return ESPEAK is not None


def speak(hub, text: str, voice: str, rate: int) -> np.ndarray:
    """int16 mono speech at `rate` Hz."""
    if voice.startswith("espeak:"):
        name, wpm = voice.removeprefix("espeak:").split("@")
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            subprocess.run([ESPEAK or "espeak-ng", "-v", name, "-s", wpm, "-w", tmp.name, text], check=True,
                           capture_output=True)
            audio, source_rate = soundfile.read(tmp.name, dtype="int16")
        return StreamResampler(source_rate, rate, dtype="int16")(audio, last=True)
    from tts.piper_tts import SpeechOptions

    speed = float(voice.split("@")[1]) if "@" in voice else 1.0
    tts = hub.tts()
    pcm = tts.synthesize_all(text, SpeechOptions(speed=speed))
    return StreamResampler(tts.sample_rate, rate, dtype="int16")(pcm, last=True)


def available(cases: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The cases this machine can speak (espeak-ng voices need the Debian package)."""
    usable = [c for c in cases if espeak_available() or not c[1].startswith("espeak:")]
    if len(usable) < len(cases):
        print(f"\nespeak-ng is not installed: {len(cases) - len(usable)} of {len(cases)} cases skipped "
              "(`make test` installs it)")
    return usable
