"""voxline tokenizer package."""
