"""voxline vocoder package."""
