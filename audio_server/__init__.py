"""voxline audio_server package."""
