"""Stage 2: see the image. Encoder registry (torch-free), image decoding, CNN encoders and the
feature cache."""
