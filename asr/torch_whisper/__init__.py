"""Whisper in plain torch on the embedded weights, with verifiable multi-token (MTP) decoding.

- :mod:`.convert` — read CTranslate2's ``model.bin`` (the packaged Whisper base / tiny.en) into torch tensors,
  cached as safetensors under the voxline cache, keyed by the model's SHA-256.
- :mod:`.model` — encoder + decoder (openai/whisper's computation, CTranslate2's fused layout), decoder KV cache.
- :mod:`.packed` — oneDNN pre-packed linears for CPU decoding, applied from outside the model.
- :mod:`.decode` — greedy decoding that reproduces faster-whisper's greedy transcripts; windowing; text.
- :mod:`.mtp` — MTP heads, the drafter, verify-then-accept decoding (token-identical to greedy).
- :mod:`.train` — ``voxline train-mtp --model whisper-base``: self-distillation of the heads on CPU.

Nothing here is imported by the service's default path (faster-whisper); import the submodules directly.
"""
