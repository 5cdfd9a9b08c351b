"""voxline tts package."""
