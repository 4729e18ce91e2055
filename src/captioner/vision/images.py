"""Image decoding and the geometric preprocessing every encoder shares.

Every path that reads an image file (web, CLI, Python API, training, feature extraction) goes
through `open_image`, so this is where the cost of a hostile or unusual file is bounded, by the
rules of `limits` (one place, with their memory cost):

- only photo formats are opened (JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF/HEIC with their
  plugins); a TIFF's first directory is checked before PIL builds its strips;
- the pixel count is read from the header and checked before anything is decoded (limit:
  `max_pixels=`, else $CAPTIONER_MAX_PIXELS, else MAX_PIXELS); so is the memory the decode
  will take (JPEGs decode at 1/2..1/8 scale: draft; other formats at full size) and a slow
  decoder's own pixel cap; the decode then waits for room in the process's memory budget and
  runs under a CPU-time limit;
- after decoding, the image is transposed, converted and reduced by an integer factor in
  stripes (no full-size copy), and extreme panoramas/strips are cut to their centre, so what
  is kept is at most a few times the encoder's size whatever the file's size;
- every mode becomes RGB correctly: EXIF orientation applied, 16-bit grey scaled (not
  clipped to white), alpha composited on white, palette/1-bit/CMYK converted, first frame of
  an animation; ICC profiles and other metadata are dropped, not kept in memory.

What the encoder sees for an ordinary photo is unchanged: the reduction is exactly the one
PIL's `resize(..., reducing_gap=3.0)` in `resize_center_crop` would do, done earlier, and the
decoded file's geometry travels in `image.info` so the resize maps onto it exactly.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import ImageError, ImageFormatRefused, ImageTooLarge
from .limits import (
    BUDGET,
    BUDGET_FACTOR,
    MAX_DECODE_MB_ENV,
    MAX_DECODE_SECONDS,
    MAX_PIXELS_ENV,
    PHOTO_FORMATS,
    SLOW_DECODERS,
    CpuDeadline,
    CpuTimeExceeded,
    accepted_formats,
    accepted_text,
    decode_cost,
    decode_limit,
    format_of,
    other_format,
    pixel_limit,
    tiff_problem,
)
from .limits import MAX_PIXELS as MAX_PIXELS  # re-exported: the limit's old home

T = TypeVar("T")
REDUCING_GAP = 3.0  # resize_center_crop's reducing_gap; open_image never reduces further
MAX_ASPECT = 4  # a longer side beyond 4x the short one is cut (only the centre square is used)
STRIPE_PIXELS = 1_000_000  # converted at a time after decoding (4 MB in RGB)

# What PIL raises for files it cannot decode (truncated, not an image, corrupt data).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")

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
_TURNS = {  # orientations that swap width and height
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_270,
}
# Modes Image.reduce handles; others are converted (a stripe at a time) before reducing.
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr", "LAB", "HSV"}


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "truncat" in text.lower() or isinstance(exc, (EOFError, SyntaxError)):
        return f"the file is truncated or corrupt: {text}"
    return text


def open_image(
    path: str | Path | BinaryIO,
    size: int,
    max_pixels: int | None = None,
    wait: float | None = None,
) -> Image.Image:
    """Decode an image file as upright RGB, with bounded work for any file: only photo formats
    are opened, the header's pixel count is checked against `pixel_limit(max_pixels)` and the
    decode's memory against `decode_limit()` first, JPEGs decode at reduced scale (at least
    twice the encoder's `size`) and other formats are reduced in stripes right after decoding,
    so the image returned has a short side of at most 6x `size` (4:1 at most).
    The decode waits for room in the process's memory budget: at most `wait` seconds if given
    (then DecodeBusy), else as long as it takes. Raises ImageTooLarge over a limit,
    ImageFormatRefused for other formats, and ImageError (an OSError) naming the file for
    anything unreadable."""
    limit = pixel_limit(max_pixels)
    name = path if isinstance(path, (str, Path)) else getattr(path, "name", "image")
    _match_pil_limit(limit)
    decoded = 0
    try:
        with contextlib.ExitStack() as stack:
            fp = stack.enter_context(open(path, "rb")) if isinstance(path, (str, Path)) else path
            im = stack.enter_context(_open_photo(fp, name))  # reads the header only
            cost = _admit(im, name, limit, size)
            decoded = im.width * im.height
            with BUDGET.take(cost, int(decode_limit() * BUDGET_FACTOR), wait):
                try:
                    return _in_time(name, _decode, im, size)
                finally:  # the full-size pixels go now, before their budget is given back
                    im.close()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own check: frames, tiles, > 2x limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else limit + 1
        raise _too_large(name, limit, pixels, f"{pixels} pixels") from None
    except DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot read image ({_reason(exc)})") from None
    finally:
        if decoded >= _TRIM_PIXELS:
            _trim_heap()


def encoder_image(
    path: str | Path | BinaryIO,
    size: int,
    max_pixels: int | None = None,
    wait: float | None = None,
) -> Image.Image:
    """`open_image`, then at once the `size` x `size` crop the encoder sees (what a server
    keeps per photo while a request waits: 150 KB, whatever the file)."""
    return resize_center_crop(open_image(path, size, max_pixels, wait), size)


def _open_photo(fp: BinaryIO, name: object) -> Image.Image:
    """PIL's image for `fp`, header read, if it is one of the accepted photo formats."""
    start = fp.tell()
    head = fp.read(64)
    fp.seek(start)
    if head[:4] in _TIFF_MAGIC and (why := tiff_problem(fp)):
        raise ImageTooLarge(
            f"{name}: this TIFF is too costly to open: {why}; save it again with fewer "
            "strips or tiles (any image editor does), or as PNG or JPEG"
        )
    fp.seek(start)
    try:  # PIL reads chunks, tags and blocks up to the pixels in Python: time-limited too
        return _in_time(name, Image.open, fp, "r", accepted_formats())
    except UnidentifiedImageError:
        pass
    kind = other_format(head)
    accepted = accepted_text()
    if kind in PHOTO_FORMATS:  # its signature, but PIL could not read its header
        raise ImageError(f"{name}: cannot read image (a corrupt {PHOTO_FORMATS[kind]} file)")
    if kind:
        raise ImageFormatRefused(
            f"{name}: {kind} images are not accepted, only photos in {accepted}; "
            "convert it to JPEG or PNG"
        )
    raise ImageError(f"{name}: cannot read image (not an image, or not one of {accepted})")


def _admit(im: Image.Image, name: object, limit: int, size: int) -> int:
    """The decode's cost in bytes, once the header shows it is within every limit."""
    w, h = im.size
    if w * h > limit:
        raise _too_large(name, limit, w * h, f"{w}x{h} pixels")
    what, slow = SLOW_DECODERS.get(im.tile[0][0] if im.tile else "", ("", 0))
    if slow and w * h > slow:
        raise ImageTooLarge(
            f"{name}: {w}x{h} pixels ({w * h / 1e6:,.1f} MP) in {what}, which is decoded "
            f"slowly, is over its limit of {slow / 1e6:g} MP; save it as PNG or JPEG"
        )
    im.draft("RGB", (size * 2, size * 2))  # JPEG only: decode at 1/2..1/8 scale
    cost = decode_cost(im, max(_kept(*im.size, size), _kept(im.height, im.width, size)))
    most = decode_limit()
    if cost > most:
        label = PHOTO_FORMATS.get(format_of(im), im.format)
        need = -(-cost >> 20)
        raise ImageTooLarge(
            f"{name}: decoding this {w}x{h} {label} ({w * h / 1e6:,.1f} MP, at full size: "
            f"only JPEG decodes at reduced size) would take ~{need:,} MB, over the limit of "
            f"{most >> 20:,} MB per image; send it smaller or as a JPEG, or raise the limit "
            f"to {need} with {MAX_DECODE_MB_ENV}"
        )
    return cost


def _kept(w: int, h: int, size: int) -> int:
    """Pixels _normalise keeps of an upright w x h image."""
    x0, y0, x1, y1 = _window(w, h)
    _, _, fx, fy = _geometry(w, h, size)
    return math.ceil((x1 - x0) / fx) * math.ceil((y1 - y0) / fy)


def _decode(im: Image.Image, size: int) -> Image.Image:
    im.load()  # the first frame of an animation
    return _normalise(im, size)


def _in_time(name: object, step: Callable[..., T], *args: object) -> T:
    """`step(*args)` with at most MAX_DECODE_SECONDS of this thread's CPU time. Used around
    the header and around the decode, never around the budget's locks (an exception raised
    by the watchdog inside a lock's Python-level __enter__ could leave it held)."""
    try:
        with CpuDeadline(MAX_DECODE_SECONDS):
            return step(*args)
    except CpuTimeExceeded:
        CpuDeadline.leave()
        raise ImageTooLarge(
            f"{name}: reading it took more than {MAX_DECODE_SECONDS:g} s of CPU time (a file "
            "built to be slow to decode?); save it again as JPEG or PNG"
        ) from None


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
    """A decoded image as small upright RGB, remembering the geometry it came from. Turned,
    converted and reduced a stripe of rows at a time, so nothing full-size is copied; the
    stripes are whole blocks of the reduction, so the result is the same as from the whole."""
    method = _orientation(im)
    w, h = (im.height, im.width) if method in _TURNS else im.size  # upright size
    box = _window(w, h)
    _, _, fx, fy = _geometry(w, h, size)
    width = box[2] - box[0]
    step = max(1, STRIPE_PIXELS // width // fy) * fy
    kept = None
    for top in range(box[1], box[3], step):
        part = _reducible(_part(im, method, (box[0], top, box[2], min(top + step, box[3]))))
        if (fx, fy) != (1, 1):
            part = part.reduce((fx, fy))  # the reduction resize_center_crop would do anyway
        if kept is None:
            shape = (math.ceil(width / fx), math.ceil((box[3] - box[1]) / fy))
            kept = Image.new(part.mode, shape)
        kept.paste(part, (0, (top - box[1]) // fy))
    rgb = _to_rgb(kept)
    rgb.info = {_SOURCE: (w, h, box[0], box[1], fx, fy)}  # drops ICC, EXIF, XMP bytes
    return rgb


def _orientation(im: Image.Image) -> Image.Transpose | None:
    """How to turn the image upright (its EXIF orientation), or None."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block must not fail the image: it has no orientation
        orientation = 1
    return _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


def _part(im: Image.Image, method: Image.Transpose | None, box: tuple) -> Image.Image:
    """`im.transpose(method).crop(box)`, copying only the box: the box is mapped back onto
    the stored image, cut there, then turned."""
    if method is None:
        return im.crop(box)
    x0, y0, x1, y1 = box
    w, h = im.size
    source = {
        Image.Transpose.FLIP_LEFT_RIGHT: (w - x1, y0, w - x0, y1),
        Image.Transpose.FLIP_TOP_BOTTOM: (x0, h - y1, x1, h - y0),
        Image.Transpose.ROTATE_180: (w - x1, h - y1, w - x0, h - y0),
        Image.Transpose.TRANSPOSE: (y0, x0, y1, x1),
        Image.Transpose.ROTATE_90: (w - y1, x0, w - y0, x1),
        Image.Transpose.ROTATE_270: (y0, h - x1, y1, h - x0),
        Image.Transpose.TRANSVERSE: (w - y1, h - x1, w - y0, h - x0),
    }[method]
    return im.crop(source).transpose(method)


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
    """The kept image as RGB, a stripe at a time: alpha on white and float grey go through
    several whole-size copies (float64: 8 bytes a pixel) otherwise."""
    if im.mode == "RGB":
        return im
    rows = max(1, STRIPE_PIXELS // im.width)
    boxes = [(0, top, im.width, min(top + rows, im.height)) for top in range(0, im.height, rows)]
    span = None
    if im.mode in ("I", "F"):  # the range of the whole image decides how it is scaled
        ranges = [_finite(im.crop(box)) for box in boxes]
        span = (min(float(a.min()) for a in ranges), max(float(a.max()) for a in ranges))
        del ranges
    rgb = Image.new("RGB", im.size)
    for box in boxes:
        rgb.paste(_part_to_rgb(im.crop(box), span), box[:2])
    return rgb


def _finite(im: Image.Image) -> np.ndarray:
    return np.nan_to_num(np.asarray(im, dtype=np.float64))


def _part_to_rgb(im: Image.Image, span: tuple[float, float] | None) -> Image.Image:
    if span is not None:
        return Image.fromarray(_wide_to_8bit(_finite(im), im.mode, *span)).convert("RGB")
    if im.mode in ("LA", "La", "RGBA", "RGBa"):  # transparent parts show as white
        rgba = im.convert(im.mode.upper()).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _wide_to_8bit(a: np.ndarray, mode: str, lo: float, hi: float) -> np.ndarray:
    """32-bit int ("I", usually 16-bit data) or float ("F", usually 0..1) grey to 0..255, given
    the whole image's range."""
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
    image = image if image.mode == "RGB" else image.convert("RGB")  # no copy of what is RGB
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
