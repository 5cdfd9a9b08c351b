"""Runs an official S3 tokenizer ONNX file (speech_tokenizer_v2_25hz.onnx, speech_tokenizer_v1.onnx) behind S3Tokenizer.

What such a file looks like, as its callers (CosyVoice's front end, Step-Audio's tokenizer, s3tokenizer's ONNX test)
use it: input 0 is the log-mel `feats` float32 [1, 128, T] (the voxcore.whisper_mel features with pad 0), input 1 its
length `feats_length` [1] (int32 in the releases); output 0 holds the codes, [1, T'] or [1, 1, T'], which callers
flatten. The callers feed one clip at a time trimmed to its length, and so does this runner: a file exported for a
fixed batch of 1 works, and no padding reaches the graph. Names are read from the file, not assumed, and the length
is cast to the integer type the file declares. The 30 s windowing of long clips (and v1's 30 s waveform pieces) is
done outside the graph, by blocks.S3Tokenizer, exactly as for the torch ports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokenizer.s3.blocks import S3Tokenizer, conv_out_len

_INT_TYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}


class OnnxModelError(ValueError):
    """An ONNX file that does not look like an S3 tokenizer (inputs/outputs)."""


class OnnxS3Tokenizer(S3Tokenizer):
    """S3Tokenizer whose `encode_codes` runs an onnxruntime session over each clip of the batch."""

    def __init__(self, path: str | Path, version: str = "v2", *, n_mels: int = 128, conv1_stride: int = 2,
                 device: str | torch.device = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort  # only a user of an .onnx file pays for importing it

        self.path, self.version, self.conv1_stride = Path(path), version, conv1_stride
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        self.feats_name, self.length_name, self.length_type = self._inputs()
        declared = self.session.get_inputs()[0].shape[1]
        self.n_mels = declared if isinstance(declared, int) else n_mels

    def _inputs(self) -> tuple[str, str, type]:
        inputs = self.session.get_inputs()
        if len(inputs) != 2 or len(inputs[0].shape) != 3 or inputs[0].type != "tensor(float)":
            seen = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise OnnxModelError(f"{self.path}: expected inputs (feats float [B, n_mels, T], feats_length int [B]), "
                                 f"found {seen}")
        if inputs[1].type not in _INT_TYPES:
            raise OnnxModelError(f"{self.path}: length input {inputs[1].name} is {inputs[1].type}, expected int32/64")
        if not self.session.get_outputs():
            raise OnnxModelError(f"{self.path}: the graph has no output")
        return inputs[0].name, inputs[1].name, _INT_TYPES[inputs[1].type]

    def encode_codes(self, mel: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lens = torch.as_tensor(lens).to("cpu", torch.int64)
        expected = conv_out_len(conv_out_len(lens, self.conv1_stride), 2)
        rows = []
        for i, n in enumerate(lens.tolist()):
            feats = mel[i:i + 1, :, :n].detach().to("cpu", torch.float32).numpy()
            out = self.session.run(None, {self.feats_name: feats,
                                          self.length_name: np.array([n], dtype=self.length_type)})[0]
            codes = torch.from_numpy(np.asarray(out).reshape(-1).astype(np.int64))
            if codes.numel() < int(expected[i]):
                raise OnnxModelError(f"{self.path}: {codes.numel()} codes for {n} frames, expected {int(expected[i])}")
            rows.append(codes[:int(expected[i])])
        batch = torch.zeros(len(rows), max((r.numel() for r in rows), default=0), dtype=torch.int64)
        for i, r in enumerate(rows):
            batch[i, :r.numel()] = r
        return batch, expected
