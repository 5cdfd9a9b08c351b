"""voxline runtime package."""
