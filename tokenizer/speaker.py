"""The speaker vector of a voice prompt: the release's CAM++ model (``campplus.onnx``) run with onnxruntime.

SPEC2 §9 "Prompt preparation": an 80-bin Kaldi fbank of the 16 kHz prompt (dither 0, the waveform as floats in
[-1, 1], not scaled to int16), mean-normalised over time, into CAM++ → a 192-d vector. The fbank is Kaldi's
defaults as torchaudio's ``compliance.kaldi.fbank`` has them (25 ms / 10 ms frames, snip edges, DC removed,
pre-emphasis 0.97, Povey window, FFT padded to 512, mel bins from 20 Hz to Nyquist, log with a float-epsilon
floor). torchaudio is not a dependency, so the few lines are here; the ONNX graph is run as shipped, not rewritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokenizer.step_audio_v1.frontend import kaldi_mel_banks

FRAME, SHIFT, N_FFT, N_MELS, RATE = 400, 160, 512, 80, 16000
PREEMPHASIS = 0.97
EPS = float(torch.finfo(torch.float32).eps)


def kaldi_fbank(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """16 kHz waveform [L] → log mel energies [frames, 80] (Kaldi defaults, no dither)."""
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(-1)
    if x.numel() < FRAME:
        return torch.zeros(0, N_MELS)
    frames = x.unfold(0, FRAME, SHIFT)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - PREEMPHASIS * previous
    window = torch.hann_window(FRAME, periodic=False, dtype=torch.float64).pow(0.85).float()  # Povey
    power = torch.fft.rfft(frames * window, n=N_FFT).abs().pow(2.0)
    energies = power @ kaldi_mel_banks(N_MELS, N_FFT, RATE, 20.0).T
    return torch.clamp(energies, min=EPS).log()


class SpeakerEncoder:
    """``campplus.onnx``: fbank [1, T, 80] → [1, 192]. CPU unless ``device`` is cuda and onnxruntime has it."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the speaker model (CAM++ ONNX) of the token2wav folder is missing")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, wave_16k: np.ndarray) -> np.ndarray:
        """The prompt's 192-d speaker vector (float32)."""
        feats = kaldi_fbank(wave_16k)
        if feats.shape[0] == 0:
            raise ValueError("the voice prompt is shorter than one 25 ms frame")
        feats = feats - feats.mean(dim=0, keepdim=True)
        out = self.session.run(None, {self.input_name: feats[None].numpy()})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)
