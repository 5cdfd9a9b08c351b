"""Smart Turn v3.2: has the speaker finished their turn? A probability from the sound of the turn so far.

Pipecat's Smart Turn model (BSD-2-Clause, Daily) is a small Whisper-encoder classifier exported to int8 ONNX. It
hears intonation and rhythm, not words: a question that ends on a falling or rising final word scores high, the same
audio stopped mid-word or on a hesitant "and…" scores low. We take the ONNX file from the `pipecat-ai` wheel, which
`make install` puts in the venv without its dependencies (`--no-deps`); pipecat itself is never imported — the
file's path is read from the distribution's metadata, so none of pipecat's modules run.

What the model reads (learnt from pipecat's own analyzer, written here from that description):
- the last 8 s of the turn at 16 kHz, or all of it left-padded with zeros to 8 s (the end of speech always sits at
  the right edge, where the model looks);
- that 8 s window normalised to zero mean and unit variance (the padding included), then Whisper's log-mel with
  80 bins (`voxcore.whisper_mel.log_mel`: Hann 400, hop 160, last frame dropped, max − 8 floor, (x + 4) / 4):
  `input_features` [batch, 80, 800];
- out: `logits` [batch, 1], already a sigmoid probability that the turn is complete.
The mel is computed in float64 (as the reference does): the model is int8, and float32 rounding of its input is
enough to move a borderline probability by 0.1.
"""

from __future__ import annotations

import importlib.metadata
import threading
from pathlib import Path

import numpy as np
import torch

from voxcore.whisper_mel import SAMPLE_RATE, log_mel

DISTRIBUTION = "pipecat-ai"
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
WINDOW_SECONDS = 8
WINDOW = WINDOW_SECONDS * SAMPLE_RATE  # 128000 samples
N_MELS = 80
_NORM_EPS = 1e-7


class SmartTurnUnavailable(RuntimeError):
    """The Smart Turn ONNX file is not installed (`make install` installs `pipecat-ai` with --no-deps)."""


def installed_model_path() -> Path:
    """Where the installed `pipecat-ai` distribution keeps the Smart Turn ONNX file (without importing pipecat)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SmartTurnUnavailable(f"{DISTRIBUTION} is not installed: run `make install` (it installs the wheel "
                                   "with --no-deps for its Smart Turn model file)") from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise SmartTurnUnavailable(f"{DISTRIBUTION} {dist.version} has no {MODEL_FILE}")
    return path


def features(audio_16k: np.ndarray) -> np.ndarray:
    """float32 [80, 800]: the model's input for the end of `audio_16k` (float mono, 16 kHz, any length)."""
    audio = np.asarray(audio_16k, np.float32).reshape(-1)[-WINDOW:]
    window = np.zeros(WINDOW, np.float32)
    window[WINDOW - len(audio):] = audio  # left padding: the turn's last moment stays at the right edge
    window = (window - window.mean()) / np.sqrt(window.var() + _NORM_EPS)
    return log_mel(torch.from_numpy(window.astype(np.float64)), n_mels=N_MELS).numpy().astype(np.float32)


class SmartTurn:
    """One ONNX session (thread-safe, one intra-op thread: a decision is ~10–80 ms of one core, and sessions
    share the cores with ASR and the LLM). `probability` blocks: call it from a worker thread, never the loop."""

    _lock = threading.Lock()
    _instance: SmartTurn | None = None

    def __init__(self, model_path: str | Path | None = None):
        import onnxruntime

        path = Path(model_path) if model_path is not None else installed_model_path()
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    @classmethod
    def shared(cls) -> SmartTurn:
        """The process's one model, loaded on first use (from the installed package)."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def probability(self, audio_16k: np.ndarray) -> float:
        """P(the turn is complete) for the turn so far — speech plus the silence heard after it."""
        (out,) = self.session.run(None, {self._input: features(audio_16k)[None]})
        return float(out[0, 0])
