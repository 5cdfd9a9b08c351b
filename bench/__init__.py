"""voxline bench package."""
