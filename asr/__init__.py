"""voxline asr package."""
