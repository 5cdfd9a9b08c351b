"""Phone-line speech recognition: WER of the same clips at 16 kHz, at 8 kHz and through the exact Twilio path.

Two sets of clips:
- **real**: the recordings in `tests/data` (real voices, read speech), with their reference transcripts;
- **voices**: a phone bot's callers — short answers to the bot's questions, spoken by espeak-ng in several
  accents and rates (voices the service was never tuned on; `apt-get install espeak-ng`).

Three lines they pass through before Whisper (each ends at 16 kHz float32, what the ASR takes):
- `16k`: as recorded;
- `8k`: resampled to 8 kHz and back (soxr, the resampler the session uses): the bandwidth a phone carries;
- `twilio`: int16 at 8 kHz → G.711 μ-law → the session's own `InputDecoder` for `audio/pcmu` (μ-law decode →
  streaming 8 → 16 kHz resampler), fed in 20 ms frames as Twilio sends them — the exact server path;
- `pstn` (extra): the Twilio path after a 300–3400 Hz band-pass, what a real phone network leaves.

Decoders (`--configs`), all Whisper through `WhisperASR.transcribe_utterance` (the call a realtime/phone turn
makes), so each row is a choice the service can make:
- `auto`: language auto-detected (what an HTTP transcription without `language` did);
- `greedy`: language pinned to `en`, greedy — what phone turns did before this benchmark;
- `beam5`: + beam search of width 5;
- `question`: greedy + the assistant's last question as Whisper's prompt (a phone bot knows what it asked);
- `beam5+question`: both;
- `tiny.en` / `tiny.en+question`: the second packaged model (Whisper tiny.en) for comparison.

Before this benchmark a phone turn decoded as `greedy` and an HTTP transcription without `language` as `auto`;
now a phone turn decodes as `beam5+question` (`VOXLINE_ASR_BEAM_SIZE`, `realtime/asr_prompt.py`).

    python -m bench.phone_asr [--configs greedy,beam5,...] [--sets real,voices] [--lines 16k,twilio] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import soundfile

from asr.textnorm import word_error_rate
from bench.common import machine, read, today, transcripts
from realtime.audio import PCMU, InputDecoder, StreamResampler, ulaw_encode

RATE = 16000
FRAME = 160  # 20 ms of μ-law at 8 kHz, one Twilio media frame

#: (what the bot asked, what the caller answers). The question is what `question` decoders get as a prompt.
PHONE_TURNS = (
    ("How can I help you today?", "What is the capital of France?"),
    ("Which city is the forecast for?", "I would like the weather in Boston tomorrow."),
    ("Can I have your account number?", "My account number is four five seven two."),
    ("When would you like to come in?", "Next Tuesday at three in the afternoon, please."),
    ("May I have your name, please?", "My name is Sarah Johnson."),
    ("Will you pay by card or by bank transfer?", "I will pay by card."),
    ("What seems to be the problem?", "My internet connection keeps dropping every evening."),
    ("Where should we deliver the package?", "Please deliver it to twelve Oak Street."),
    ("Is there anything else I can help with?", "No, thank you, that is all for today."),
    ("How many tickets do you need?", "Two adult tickets and one child ticket."),
    ("What would you like to know?", "How far is the moon from the earth?"),
    ("Which language do you prefer?", "I speak English and a little Spanish."),
)
#: espeak-ng voice, words per minute: four accents, a female variant, slow to fast
VOICES = (("en-us", 165), ("en-gb", 140), ("en-gb-scotland+f3", 185), ("en-029+m3", 210))
CONFIGS = ("auto", "greedy", "beam5", "question", "beam5+question", "tiny.en", "tiny.en+question")
LINES = ("16k", "8k", "twilio", "pstn")


@dataclass(frozen=True)
class Clip:
    name: str
    audio: np.ndarray  # float32 mono at 16 kHz
    reference: str
    question: str | None  # what the bot asked just before (phone turns only)


# ---- the clips ----------------------------------------------------------------------------------------------
def real_clips() -> list[Clip]:
    return [Clip(p.relative_to(p.parent.parent).as_posix(), read(p), ref, None) for p, ref in transcripts()]


def espeak(text: str, voice: str, wpm: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", tmp.name, text], check=True,
                       capture_output=True)
        audio, rate = soundfile.read(tmp.name, dtype="float32")
    return StreamResampler(rate, RATE)(audio, last=True)


def voice_clips(turns=PHONE_TURNS, voices=VOICES) -> list[Clip]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("the voices set needs espeak-ng: apt-get install espeak-ng (or run with --sets real)")
    return [Clip(f"{voice}@{wpm}:{n}", espeak(answer, voice, wpm), answer, question)
            for voice, wpm in voices for n, (question, answer) in enumerate(turns)]


# ---- the lines ----------------------------------------------------------------------------------------------
def to_int16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def narrowband(audio: np.ndarray) -> np.ndarray:
    low = StreamResampler(RATE, 8000)(audio, last=True)
    return StreamResampler(8000, RATE)(low, last=True)


def band_pass(audio8k: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """A phone network's voice band, as a brick-wall filter in the frequency domain (offline, whole clip)."""
    spectrum = np.fft.rfft(audio8k)
    freqs = np.fft.rfftfreq(len(audio8k), 1 / 8000)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0
    return np.fft.irfft(spectrum, len(audio8k)).astype(np.float32)


def twilio_path(audio: np.ndarray, pstn: bool = False) -> np.ndarray:
    """μ-law 8 kHz in 20 ms frames through the session's decoder, then 0.3 s of line silence (a call goes on)."""
    low = StreamResampler(RATE, 8000)(audio, last=True)
    if pstn:
        low = band_pass(low)
    wire = ulaw_encode(to_int16(low)) + ulaw_encode(np.zeros(2400, np.int16))
    decoder = InputDecoder(PCMU)
    return np.concatenate([decoder(wire[i:i + FRAME]) for i in range(0, len(wire), FRAME)])


def through(line: str, audio: np.ndarray) -> np.ndarray:
    if line == "16k":
        return audio
    if line == "8k":
        return narrowband(audio)
    return twilio_path(audio, pstn=line == "pstn")


# ---- the decoders -------------------------------------------------------------------------------------------
class Decoders:
    def __init__(self):
        from asr.whisper_asr import WhisperASR

        self._models: dict[str, WhisperASR] = {}
        self._cls = WhisperASR

    def model(self, name: str):
        if name not in self._models:
            self._models[name] = self._cls(name)
        return self._models[name]

    def __call__(self, config: str, clip: Clip, audio: np.ndarray) -> str:
        parts = config.split("+")
        model = self.model("whisper-tiny.en" if "tiny.en" in parts else "whisper-base")
        language = None if "auto" in parts else "en"
        prompt = clip.question if "question" in parts else None
        beam = 5 if "beam5" in parts else 1
        return model.transcribe_utterance(audio, language, prompt, beam_size=beam)


def foreign_script(text: str) -> bool:
    """Text that is not in the Latin script (the auto-detected-language failure: Thai, Cyrillic, CJK…)."""
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(not ("a" <= c.lower() <= "z" or c in "àâäçéèêëîïôöùûüñ'") for c in letters) > len(letters) / 3


# ---- the run --------------------------------------------------------------------------------------------------
def run(sets: list[str], configs: list[str], lines: list[str], show: bool = False) -> list[dict]:
    clips = {}
    if "real" in sets:
        clips["real"] = real_clips()
    if "voices" in sets:
        clips["voices"] = voice_clips()
    decode = Decoders()
    rows = []
    for set_name, set_clips in clips.items():
        seconds = sum(len(c.audio) for c in set_clips) / RATE
        print(f"{set_name}: {len(set_clips)} clips, {seconds:.1f} s", flush=True)
        prepared = {line: [through(line, c.audio) for c in set_clips] for line in lines}
        for config in configs:
            without = config.replace("+question", "").replace("question", "greedy")
            if without != config and without in configs and all(c.question is None for c in set_clips):
                continue  # no conversation to take a prompt from: the same decode as `without`
            row = {"set": set_name, "config": config}
            for line in lines:
                t0 = time.perf_counter()
                texts = [decode(config, c, a) for c, a in zip(set_clips, prepared[line])]
                row[line] = 100 * word_error_rate([c.reference for c in set_clips], texts)
                row[f"{line}_foreign"] = sum(foreign_script(t) for t in texts)
                row[f"{line}_rtf"] = (time.perf_counter() - t0) / seconds
                if show:
                    for c, t in zip(set_clips, texts):
                        print(f"    {line:6s} {c.name:28s} {t!r}")
            rows.append(row)
            cells = "  ".join(f"{line} {row[line]:5.1f}%" + (f" ({row[line + '_foreign']} foreign)"
                                                              if row[line + "_foreign"] else "") for line in lines)
            print(f"  {config:18s} {cells}", flush=True)
    return rows


def table(rows: list[dict], lines: list[str]) -> str:
    head = "| set | decoder | " + " | ".join(f"WER {line}" for line in lines) + " | twilio − 16k | RTF |"
    out = [head, "|" + "---|" * (len(lines) + 4)]
    for r in rows:
        cells = []
        for line in lines:
            cell = f"{r[line]:.1f}%"
            if r[f"{line}_foreign"]:
                cell += f" ({r[f'{line}_foreign']} in another script)"
            cells.append(cell)
        gap = f"{r['twilio'] - r['16k']:+.1f}" if "twilio" in r and "16k" in r else "—"
        rtf = max(r[f"{line}_rtf"] for line in lines)
        out.append(f"| {r['set']} | {r['config']} | " + " | ".join(cells) + f" | {gap} | {rtf:.3f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="real,voices")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--lines", default=",".join(LINES))
    parser.add_argument("--show", action="store_true", help="print every transcript")
    parser.add_argument("--quick", action="store_true", help="before and after only, 16k and twilio lines")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.lines = "greedy,beam5+question", "16k,twilio"
    sets, configs, lines = (a.split(",") for a in (args.sets, args.configs, args.lines))
    print(f"phone ASR, {today()}, {machine()}", flush=True)
    rows = run(sets, configs, lines, args.show)
    print()
    print(f"### Phone-line ASR ({today()}, {machine()})")
    print("Whisper (packaged weights) through `WhisperASR.transcribe_utterance`; corpus WER after normalisation.")
    print()
    print(table(rows, lines))


if __name__ == "__main__":
    main()
