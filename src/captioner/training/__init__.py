"""Stage 6: the trainer, its feature sources and its batching/learning-rate schedule."""
