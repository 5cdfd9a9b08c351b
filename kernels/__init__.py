"""voxline kernels package."""
