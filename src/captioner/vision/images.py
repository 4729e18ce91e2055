"""Image decoding and the geometric preprocessing every encoder shares.

Every path that reads an image file (web, CLI, Python API, training, feature extraction) goes
through `open_image`, so this is where the cost of a hostile or unusual file is bounded:

- the pixel count is read from the header and checked before anything is decoded (limit:
  `max_pixels=`, else $CAPTIONER_MAX_PIXELS, else MAX_PIXELS);
- JPEGs decode at 1/2..1/8 scale (draft); other formats are reduced by an integer factor right
  after decoding, and extreme panoramas/strips are cut to their centre, so what is kept is at
  most a few times the encoder's size whatever the file's size;
- every mode becomes RGB correctly: EXIF orientation applied, 16-bit grey scaled (not
  clipped to white), alpha composited on white, palette/1-bit/CMYK converted, first frame of
  an animation; ICC profiles and other metadata are dropped, not kept in memory.

What the encoder sees for an ordinary photo is unchanged: the reduction is exactly the one
PIL's `resize(..., reducing_gap=3.0)` in `resize_center_crop` would do, done earlier, and the
decoded file's geometry travels in `image.info` so the resize maps onto it exactly.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import ConfigError, ImageError, ImageTooLarge

# Why 120 MP: camera and phone JPEGs up to 108 MP (12000x9000) and the 102 MP medium-format
# sensors pass, and cost little since draft decodes them at 1/8 scale. A non-JPEG at the limit
# is decoded in full: at most 4 bytes/pixel, ~480 MB, once, then reduced. Larger images are
# almost always bombs (a 13000x13000 PNG of zeros is 194 KB and 0.5-0.7 GB decoded).
MAX_PIXELS = 120_000_000
MAX_PIXELS_ENV = "CAPTIONER_MAX_PIXELS"
REDUCING_GAP = 3.0  # resize_center_crop's reducing_gap; open_image never reduces further
MAX_ASPECT = 4  # a longer side beyond 4x the short one is cut (only the centre square is used)

# What PIL raises for files it cannot decode (truncated, not an image, corrupt data).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)

_TRIM_PIXELS = 16_000_000  # after decoding this many pixels, give freed memory back
_LIBC: object = None  # glibc's malloc_trim, False where there is none

_SOURCE = "captioner.source"  # info key: (w, h, x0, y0, fx, fy) of the decoded file
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes Image.reduce handles; others are converted (at full size) before reducing.
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr", "LAB", "HSV"}


def pixel_limit(max_pixels: int | None = None) -> int:
    """The decoding limit in pixels: `max_pixels`, else $CAPTIONER_MAX_PIXELS, else MAX_PIXELS."""
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return MAX_PIXELS
        try:  # "200000000", "200_000_000" and "2e8" all mean 200 MP
            max_pixels = int(text) if text.isdigit() else int(float(text))
        except (ValueError, OverflowError):
            max_pixels = 0
        if max_pixels < 1:
            raise ConfigError(
                f"{MAX_PIXELS_ENV}={text!r} is not a number of pixels; "
                f"use a positive integer such as {MAX_PIXELS} or unset it"
            )
    if max_pixels < 1:
        raise ConfigError(f"max_pixels must be at least 1, got {max_pixels}")
    return int(max_pixels)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "truncat" in text.lower() or isinstance(exc, (EOFError, SyntaxError)):
        return f"the file is truncated or corrupt: {text}"
    return text


def open_image(
    path: str | Path | BinaryIO, size: int, max_pixels: int | None = None
) -> Image.Image:
    """Decode an image file as upright RGB, with bounded work for any file: the header's pixel
    count is checked against `pixel_limit(max_pixels)` first, JPEGs decode at reduced scale
    (at least twice the encoder's `size`) and other formats are reduced right after decoding,
    so the image returned has a short side of at most 6x `size` (4:1 at most).
    Raises ImageTooLarge over the limit and ImageError (an OSError) naming the file for
    anything unreadable."""
    limit = pixel_limit(max_pixels)
    name = path if isinstance(path, (str, Path)) else getattr(path, "name", "image")
    _match_pil_limit(limit)
    decoded = 0
    try:
        with Image.open(path) as im:  # reads the header only
            try:
                w, h = im.size
                if w * h > limit:
                    raise _too_large(name, limit, w * h, f"{w}x{h} pixels")
                im.draft("RGB", (size * 2, size * 2))  # JPEG only: decode at 1/2..1/8 scale
                decoded = im.width * im.height
                im.load()  # the first frame of an animation
                return _normalise(im, size)
            finally:
                im.close()  # frees the full-size pixels now, not at garbage collection
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own check: frames, tiles, > 2x limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else limit + 1
        raise _too_large(name, limit, pixels, f"{pixels} pixels") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name}: cannot read image (not an image, or a format Pillow cannot read)"
        ) from None
    except DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot read image ({_reason(exc)})") from None
    finally:
        if decoded >= _TRIM_PIXELS:
            _trim_heap()


def _trim_heap() -> None:
    # glibc keeps a freed big image in the decoding thread's malloc arena, so every thread of a
    # server's decode pool would hold its largest image's worth of RSS for good; hand it back.
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to do
            _LIBC = False
    if _LIBC:
        _LIBC(0)


def _match_pil_limit(limit: int) -> None:
    # PIL's process-wide bomb check warns above 89 MP (and refuses above twice that) before we
    # can see the size; ours is the one that says how to raise it, so PIL's is lifted to ours
    # (never lowered) and stays as a second line for frames and tiles.
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def _too_large(name: object, limit: int, pixels: int, what: str) -> ImageTooLarge:
    return ImageTooLarge(
        f"{name}: {what} ({pixels / 1e6:,.1f} MP) is over the limit of {limit:,} pixels; "
        f"to decode it anyway, raise the limit to {pixels} with {MAX_PIXELS_ENV} "
        "(or --max-pixels, or max_pixels=)"
    )


def _normalise(im: Image.Image, size: int) -> Image.Image:
    """A decoded image as small upright RGB, remembering the geometry it came from."""
    im = _reducible(_upright(im))
    w, h = im.size
    box = _window(w, h)
    _, _, fx, fy = _geometry(w, h, size)
    if (fx, fy) != (1, 1) or box != (0, 0, w, h):
        im = im.reduce((fx, fy), box=box)  # the reduction resize_center_crop would do anyway
    rgb = _to_rgb(im)
    rgb.info = {_SOURCE: (w, h, box[0], box[1], fx, fy)}  # drops ICC, EXIF, XMP bytes
    return rgb


def _upright(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block must not fail the image: it has no orientation
        orientation = 1
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return im.transpose(method) if method is not None else im


def _reducible(im: Image.Image) -> Image.Image:
    """Convert, at full size, only the modes Image.reduce cannot handle."""
    if im.mode in _REDUCIBLE:
        return im
    if im.mode == "1":
        return im.convert("L")
    if im.mode in ("P", "PA"):
        return im.convert("RGBA" if im.has_transparency_data else "RGB")
    if im.mode.startswith("I;16"):  # 16-bit grey: keep the high byte (convert() clips to 255)
        grey = np.asarray(im)
        out = np.empty(grey.shape, np.uint8)
        np.right_shift(grey, 8, out=out, casting="unsafe")
        return Image.fromarray(out)
    return im.convert("RGBA" if "A" in im.getbands() else "RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "F"):
        return Image.fromarray(_wide_to_8bit(np.asarray(im, dtype=np.float64), im.mode)).convert(
            "RGB"
        )
    if im.mode in ("LA", "La", "RGBA", "RGBa"):  # transparent parts show as white
        rgba = im.convert(im.mode.upper()).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _wide_to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """32-bit int ("I", usually 16-bit data) or float ("F", usually 0..1) grey to 0..255."""
    a = np.nan_to_num(a)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "I" and lo >= 0 and hi <= 65535:
        a = np.floor(a / 256)  # the high byte, as for "I;16"
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255
    elif lo < 0 or hi > 255:  # unknown range: stretch what is there
        a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """resize_center_crop's resized size (nw, nh) for a w x h image, and the integer factors
    PIL's resize(..., reducing_gap) reduces it by before resampling (same arithmetic)."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    fx = int(w / nw / REDUCING_GAP) or 1
    fy = int(h / nh / REDUCING_GAP) or 1
    return nw, nh, fx, fy


def _window(w: int, h: int) -> tuple[int, int, int, int]:
    """The part of a w x h image worth keeping: all of it, or the centre of a long strip."""
    if w > MAX_ASPECT * h:
        x0 = (w - MAX_ASPECT * h) // 2
        return (x0, 0, x0 + MAX_ASPECT * h, h)
    if h > MAX_ASPECT * w:
        y0 = (h - MAX_ASPECT * w) // 2
        return (0, y0, w, y0 + MAX_ASPECT * w)
    return (0, 0, w, h)


def _source(image: Image.Image) -> tuple[int, int, int, int, int, int]:
    """(w, h, x0, y0, fx, fy): the decoded file `image` is a reduced window of, if open_image
    made it and it is unchanged since; else the image itself."""
    src = image.info.get(_SOURCE)
    if isinstance(src, tuple) and len(src) == 6:
        w, h, x0, y0, fx, fy = src
        box = _window(w, h)
        kept = (math.ceil((box[2] - box[0]) / fx), math.ceil((box[3] - box[1]) / fy))
        if box[:2] == (x0, y0) and image.size == kept:
            return src
    return (*image.size, 0, 0, 1, 1)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` (aspect kept), then crop the centre square. An image from
    open_image is mapped onto the file it was decoded from, so the result is the same as from
    the whole file (byte for byte unless the file was a strip longer than 4:1)."""
    w, h, x0, y0, fx, fy = _source(image)
    image = image.convert("RGB")
    nw, nh, _, _ = _geometry(w, h, size)
    left, top = (nw - size) // 2, (nh - size) // 2
    if (x0, y0) == (0, 0) and max(w, h) <= MAX_ASPECT * min(w, h):
        box = None if (fx, fy) == (1, 1) else (0, 0, w / fx, h / fy)
        image = image.resize((nw, nh), Image.BICUBIC, box=box, reducing_gap=REDUCING_GAP)
        return image.crop((left, top, left + size, top + size))
    # A strip: resample only the centre square (all of a 30000x10 strip would be 672000x224).
    sx, sy = w / nw, h / nh
    box = (
        (left * sx - x0) / fx,
        (top * sy - y0) / fy,
        ((left + size) * sx - x0) / fx,
        ((top + size) * sy - y0) / fy,
    )
    return image.resize((size, size), Image.BICUBIC, box=box, reducing_gap=REDUCING_GAP)


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
