"""The Python API: `Captioner.load()` gives a ready model; `.caption(images)` gives sentences."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DecodeConfig
from .core.errors import BundleError
from .data.vocab import Vocabulary
from .decoders.registry import decoder_input
from .decoders.search import beam_search
from .storage.bundle import load_bundle
from .vision.encoders import Encoder
from .vision.images import open_image, pixel_limit

ImageLike = str | Path | Image.Image


def default_model_path() -> Path:
    return Path(__file__).parent / "models" / "default"


class Captioner:
    """A loaded encoder + decoder. Load once, caption many times (thread-compatible, no state)."""

    def __init__(
        self, path: Path, device: str | torch.device = "cpu", max_pixels: int | None = None
    ) -> None:
        """`max_pixels`: largest image decoded (None: $CAPTIONER_MAX_PIXELS or 120 MP)."""
        self.bundle = load_bundle(path, device)
        try:
            grid = decoder_input(self.bundle.model.cfg.kind) == "grid"  # attention reads regions
            self.encoder = Encoder(
                self.bundle.encoder, device, state=self.bundle.encoder_state, grid=grid
            )
        except RuntimeError as exc:  # a fine-tuned encoder whose tensors do not fit
            raise BundleError(
                f"{path}: encoder weights do not match {self.bundle.encoder}: {exc}"
            ) from None
        self.device = torch.device(device)
        self.path = Path(path)
        self.max_pixels = None if max_pixels is None else pixel_limit(max_pixels)  # validated

    @classmethod
    def load(
        cls, path: str | Path | None = None, device: str = "cpu", max_pixels: int | None = None
    ) -> Captioner:
        """Load a model folder; None loads the model bundled with the package."""
        return cls(Path(path) if path else default_model_path(), device, max_pixels)

    @property
    def vocab(self) -> Vocabulary:
        return self.bundle.vocab

    @property
    def decoding(self) -> DecodeConfig:
        """The model's own decoding settings (saved in its bundle)."""
        return self.bundle.decoding

    def open(self, image: ImageLike) -> Image.Image:
        """A path or PIL image as an RGB PIL image (decoded at reduced scale when possible;
        ImageTooLarge above `max_pixels`)."""
        if isinstance(image, Image.Image):
            return image
        return open_image(image, self.encoder.spec.image_size, self.max_pixels)

    def caption(
        self,
        images: Sequence[ImageLike] | ImageLike,
        beam_size: int | None = None,
        max_len: int | None = None,
        length_penalty: float | None = None,
        batch_size: int = 16,
        decode: DecodeConfig | None = None,
    ) -> list[str]:
        """One caption per image, in order. Decoding: `decode`, else the model's own settings
        with any of beam_size/max_len/length_penalty replaced. Raises ImageError (an OSError)
        for unreadable files."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        decode = (decode or self.decoding).resolve(
            beam_size=beam_size, max_len=max_len, length_penalty=length_penalty
        )
        out: list[str] = []
        for i in range(0, len(images), batch_size):
            pixels = [self.encoder.preprocess(self.open(im)) for im in images[i : i + batch_size]]
            feats = self.encoder(torch.from_numpy(np.stack(pixels)))
            seqs = beam_search(
                self.bundle.model, feats, decode.beam_size, decode.max_len, decode.length_penalty
            )
            out.extend(self.vocab.decode(s) for s in seqs)
        return out
