"""Image decoding and the geometric preprocessing every encoder shares."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..core.errors import ImageError

# What PIL raises for files it cannot decode (truncated, not an image, too many pixels).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_image(path: str | Path | BinaryIO, size: int) -> Image.Image:
    """Decode an image file as RGB. JPEG decoding at reduced scale (draft) stays at least twice
    the encoder's size, so big photos decode fast without changing what the encoder sees.
    Raises ImageError (an OSError) naming the file."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))
            return im.convert("RGB")
    except DECODE_ERRORS as exc:
        name = path if isinstance(path, (str, Path)) else getattr(path, "name", "image")
        raise ImageError(f"{name}: cannot read image ({exc})") from None


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (aspect kept), then crop the centre square."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """One image as a uint8 HWC array at the encoder's size (cheap to send between workers)."""
    return np.asarray(resize_center_crop(image, size), dtype=np.uint8)


def augment(image: Image.Image, size: int) -> np.ndarray:
    """Training-time view of an image for fine-tuning: random resized crop and flip."""
    from torchvision import transforms

    pipeline = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
        ]
    )
    return np.asarray(pipeline(image.convert("RGB")), dtype=np.uint8)
