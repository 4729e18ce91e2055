"""Model files: bundles (what ships and loads) and training checkpoints (what resumes).
Safetensors + JSON only; nothing is ever unpickled."""
