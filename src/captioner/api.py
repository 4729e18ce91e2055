"""The Python API: `Captioner.load()` gives a ready model; `.caption(images)` gives sentences."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .bundle import BundleError, load_bundle
from .decode import beam_search
from .encoders import Encoder, open_image

ImageLike = str | Path | Image.Image


def default_model_path() -> Path:
    return Path(__file__).parent / "models" / "default"


class Captioner:
    """A loaded encoder + decoder. Load once, caption many times (thread-compatible, no state)."""

    def __init__(self, path: Path, device: str | torch.device = "cpu") -> None:
        self.bundle = load_bundle(path, device)
        try:
            self.encoder = Encoder(self.bundle.encoder, device, state=self.bundle.encoder_state)
        except RuntimeError as exc:  # a fine-tuned encoder whose tensors do not fit
            raise BundleError(f"{path}: encoder weights do not match "
                              f"{self.bundle.encoder}: {exc}") from None
        self.device = torch.device(device)
        self.path = Path(path)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> Captioner:
        """Load a model folder; None loads the model bundled with the package."""
        return cls(Path(path) if path else default_model_path(), device)

    @property
    def vocab(self):
        return self.bundle.vocab

    def _open(self, image: ImageLike) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        return open_image(image, self.encoder.spec.image_size)

    def caption(self, images: Sequence[ImageLike] | ImageLike, beam_size: int | None = None,
                max_len: int | None = None, batch_size: int = 16) -> list[str]:
        """One caption per image, in order. Raises OSError/PIL errors for unreadable files."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        dec = self.bundle.decoding
        beam = beam_size or dec.get("beam_size", 3)
        length = max_len or dec.get("max_len", 20)
        penalty = dec.get("length_penalty", 0.0)
        out: list[str] = []
        for i in range(0, len(images), batch_size):
            pixels = [self.encoder.preprocess(self._open(im)) for im in images[i:i + batch_size]]
            feats = self.encoder(torch.from_numpy(np.stack(pixels)))
            seqs = beam_search(self.bundle.model, feats, beam, length, penalty)
            out.extend(self.vocab.decode(s) for s in seqs)
        return out
