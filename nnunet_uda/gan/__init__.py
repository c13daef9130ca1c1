"""Image translation: the organ-attention CycleGAN of the FLARE 2024 Task 3 pipeline."""
