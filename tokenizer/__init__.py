"""Step-Audio dual-codebook tokenizer: audio -> linguistic (16.7 Hz, 1024) + semantic (25 Hz, 4096) codes.

Public API (importing this package loads torch but no ASR/TTS model):
- `DualCodebookTokenizer` (+ `TokenizerConfig`, `TokenizerState`, `TokenizerOutput`): both streams causal,
  streamed in batch slots; `.tiny(seed)`, `.from_pretrained(dir)`.
- `interleave`, `split`, `split_whole_groups`, `AudioTokenLayout`, `STEP_AUDIO_LAYOUT`: LLM id layout.
- `tokenizer.whisper_linguistic.WhisperLinguisticTokenizer`: the real linguistic stream (per utterance).
- `tokenizer.train_codebook.main(argv)`: `voxline train-codebook`.
"""

from tokenizer.interleave import (GROUP_MS, GROUP_SIZE, STEP_AUDIO_LAYOUT, AudioTokenLayout, interleave, split,
                                  split_whole_groups)
from tokenizer.model import DualCodebookTokenizer, TokenizerConfig, TokenizerOutput, TokenizerState

__all__ = ["GROUP_MS", "GROUP_SIZE", "STEP_AUDIO_LAYOUT", "AudioTokenLayout", "DualCodebookTokenizer",
           "TokenizerConfig", "TokenizerOutput", "TokenizerState", "interleave", "split", "split_whole_groups"]
