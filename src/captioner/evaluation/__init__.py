"""Stage 5: caption metrics (pycocoevalcap) and the evaluation pipeline used by the CLI,
training and bench scripts."""
