"""Step-Audio dual-codebook tokenizer: audio -> linguistic (16.7 Hz, 1024) + semantic (25 Hz, 4096) codes.

Public API (importing this package loads torch but no ASR/TTS model):
- `DualCodebookTokenizer` (+ `TokenizerConfig`, `TokenizerState`, `TokenizerOutput`): both streams causal,
  streamed in batch slots; `.tiny(seed)`, `.from_pretrained(dir)`.
- The LLM id layout of its codes (`interleave`, `split`, `AudioTokenLayout`, ...) is `voxcore.interleave`: the
  vocoder and the runtime read it too.
- `tokenizer.whisper_linguistic.WhisperLinguisticTokenizer`: the real linguistic stream (per utterance).
- `tokenizer.train_codebook.main(argv)`: `voxline train-codebook`.
"""

from tokenizer.model import DualCodebookTokenizer, TokenizerConfig, TokenizerOutput, TokenizerState

__all__ = ["DualCodebookTokenizer", "TokenizerConfig", "TokenizerOutput", "TokenizerState"]
