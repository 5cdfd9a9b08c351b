"""voxline realtime package."""
