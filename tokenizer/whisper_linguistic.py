"""The linguistic stream that runs today: embedded Whisper base encoder features + a k-means codebook.

Whisper's encoder frames are 50 Hz (20 ms); mean-pooling 3 of them gives 60 ms per token, i.e. the
16.7 Hz linguistic rate, and 6 frames = 2 tokens = one 120 ms group, so these codes line up with the
semantic stream's groups exactly like Step-Audio's Paraformer codes do.

Honest limits: Whisper's encoder attends over its whole 30 s window in both directions, so it is *not*
causal and cannot stream token by token; this variant encodes per utterance (e.g. when VAD closes a
turn). Each utterance is zero-padded to 30 s as Whisper was trained; longer audio is cut into 30 s
windows that are encoded independently. Throughput is therefore per window, not per second of speech.

Whisper's encoder output carries a strong absolute-position component (its sinusoidal position
embedding survives the layers): the same word encoded 2 s later in the window had cosine similarity
~0.5 to itself here. We subtract the encoder's output for a silent 30 s window at the same position,
which lifted that similarity to ~0.8 in the same check, so codes depend more on what is said than on
when in the window it is said.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from tokenizer.codebook import NearestCentroidCodebook
from voxcore.interleave import GROUP_SAMPLES_16K, LING_PER_GROUP, STEP_AUDIO_LAYOUT, AudioTokenLayout, interleave

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS
ENCODER_HOP = 320  # samples per encoder frame (50 Hz)
POOL = 3  # encoder frames per linguistic token (60 ms)
DEFAULT_CODEBOOK_NAME = "linguistic-whisper-base.safetensors"


def default_codebook_path() -> Path:
    """Where `voxline train-codebook` saves the codebook unless told otherwise."""
    from voxcore.model_cache import cache_root

    return cache_root() / "codebooks" / DEFAULT_CODEBOOK_NAME


@functools.lru_cache(maxsize=2)
def _load_whisper(model_name: str, threads: int):
    import ctranslate2

    from voxcore.embedded_whisper import whisper_model_dir

    return ctranslate2.models.Whisper(str(whisper_model_dir(model_name)), device="cpu",
                                      compute_type="int8", intra_threads=threads)


class WhisperFeatureEncoder:
    """Audio (16 kHz, any length) -> pooled Whisper encoder features [2G, 512] at 16.7 Hz."""

    def __init__(self, model_name: str = "whisper-base", threads: int = 2, batch: int = 4):
        from faster_whisper.feature_extractor import FeatureExtractor

        self.model = _load_whisper(model_name, threads)
        self.features = FeatureExtractor(feature_size=80)
        self.batch = batch
        self._baseline: torch.Tensor | None = None  # [1500, 512] output for a silent window

    def baseline(self) -> torch.Tensor:
        """Encoder output for 30 s of silence [1500, 512], the positional part we subtract."""
        if self._baseline is None:
            self._baseline = self._encode_raw([np.zeros(WINDOW_SAMPLES, dtype=np.float32)])[0]
        return self._baseline

    def n_groups(self, n_samples: int) -> int:
        return -(-n_samples // GROUP_SAMPLES_16K)

    def encode(self, audios: list[np.ndarray]) -> list[torch.Tensor]:
        """Each utterance [n] float32 -> features [2 * ceil(n / 1920), 512]."""
        windows, owners = [], []
        for i, audio in enumerate(audios):
            audio = np.asarray(audio, dtype=np.float32).reshape(-1)
            for start in range(0, max(len(audio), 1), WINDOW_SAMPLES):
                windows.append(audio[start:start + WINDOW_SAMPLES])
                owners.append(i)
        pooled = self._encode_windows(windows)
        per_utt: list[list[torch.Tensor]] = [[] for _ in audios]
        for owner, feats in zip(owners, pooled):
            per_utt[owner].append(feats)
        return [torch.cat(parts, 0) for parts in per_utt]

    def _encode_raw(self, windows: list[np.ndarray]) -> list[torch.Tensor]:
        """Each window [<= 480000] -> encoder output [1500, 512] (window zero-padded to 30 s)."""
        import ctranslate2

        out = []
        for start in range(0, len(windows), self.batch):
            chunk = windows[start:start + self.batch]
            mels = np.stack([self.features(w, padding=WINDOW_SAMPLES)[:, :3000] for w in chunk])  # [b, 80, 3000]
            enc = self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mels)), to_cpu=True)
            out.extend(torch.from_numpy(np.array(enc)))  # b x [1500, 512]
        return out

    def _encode_windows(self, windows: list[np.ndarray]) -> list[torch.Tensor]:
        base = self.baseline()
        out = []
        for w, frames in zip(windows, self._encode_raw(windows)):
            # Whole groups: 6 encoder frames (120 ms) -> 2 tokens; the last group is zero-padded audio.
            used = (frames - base)[: self.n_groups(len(w)) * LING_PER_GROUP * POOL]  # [6G, 512]
            out.append(used.reshape(-1, POOL, used.shape[-1]).mean(1))  # [2G, 512]
        return out


class WhisperLinguisticTokenizer:
    """Real linguistic codes on CPU: Whisper base encoder features -> trained nearest-centroid codebook.

    `encode(audio)` returns [2G] codes for G = ceil(n / 1920) groups, the same G the streaming
    `DualCodebookTokenizer` produces for the semantic stream, so `interleave(ling, sem)` lines up.
    A codebook with fewer than 1024 codes (small training data) still uses the 1024-slot id layout.
    """

    def __init__(self, codebook: NearestCentroidCodebook, encoder: WhisperFeatureEncoder | None = None):
        self.codebook = codebook
        self.encoder = encoder or WhisperFeatureEncoder()

    @classmethod
    def load(cls, path: str | Path | None = None, **encoder_args) -> "WhisperLinguisticTokenizer":
        path = Path(path) if path else default_codebook_path()
        if not path.exists():
            raise FileNotFoundError(f"no linguistic codebook at {path}; train one with `voxline train-codebook`")
        return cls(NearestCentroidCodebook.load(path), WhisperFeatureEncoder(**encoder_args))

    def encode(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One utterance [n] at 16 kHz -> linguistic codes [2G] (long)."""
        return self.encode_batch([audio])[0]

    def encode_batch(self, audios: list) -> list[torch.Tensor]:
        arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a for a in audios]
        return [self.codebook(f) for f in self.encoder.encode(arrays)]


def encode_utterance_ids(audio: np.ndarray | torch.Tensor, linguistic: WhisperLinguisticTokenizer,
                         semantic_model, layout: AudioTokenLayout = STEP_AUDIO_LAYOUT) -> torch.Tensor:
    """One utterance [n] -> LLM audio ids [5G]: real Whisper linguistic codes interleaved with the
    semantic codes of `semantic_model` (a `DualCodebookTokenizer`: tiny/random or a local checkpoint).
    Both streams cover the same G = ceil(n / 1920) groups, so they interleave without trimming."""
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(1, -1)
    ling = linguistic.encode(wave[0])
    sem = semantic_model(wave).semantic[0]
    return interleave(ling, sem, layout)
