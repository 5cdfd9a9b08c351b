"""Step-Audio v1 (Step-Audio-TTS-3B) vocoder pieces: the v1 flow and the 22.05 kHz HiFT (golden SPEC v1 §8)."""
