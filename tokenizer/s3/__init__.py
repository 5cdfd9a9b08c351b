"""S3 speech tokenizers: 16 kHz speech -> 25 Hz discrete codes.

- v2 (Step-Audio 2 / CosyVoice2 voice-prompt tokens, 6561 FSQ codes): golden SPEC step_audio2 §3, §8.
- v1 (Step-Audio v1 semantic stream "vq06", 4096 VQ codes): golden SPEC step_audio_v1 §2, §4.

Public API:
- `load_s3_tokenizer(path, version="v2"|"v1", config=None, dtype, device)` -> `S3Tokenizer`, from a safetensors/.pt
  state dict in the reference's names (strictly checked) or an official `.onnx` file (onnxruntime).
- `S3Tokenizer.tokenize(waves_16k) -> list[list[int]]` and `.tokenize_mel(mel, lens) -> (codes, lens)`.
"""

from tokenizer.s3.blocks import S3Config, S3Tokenizer
from tokenizer.s3.loader import load_s3_tokenizer
from tokenizer.s3.onnx_runner import OnnxModelError, OnnxS3Tokenizer
from tokenizer.s3.v1 import S3TokenizerV1
from tokenizer.s3.v2 import S3TokenizerV2

__all__ = ["OnnxModelError", "OnnxS3Tokenizer", "S3Config", "S3Tokenizer", "S3TokenizerV1", "S3TokenizerV2",
           "load_s3_tokenizer"]
