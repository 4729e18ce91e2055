"""What decoding one image may cost, in one place. The encoder needs 224x224 pixels, so what a
file may cost is bounded by that, not by what its header allows. Each rule, its default and what
it protects against (memory per pixel measured by `bench/memory_attack.py --calibrate`):

- accepted formats: JPEG, PNG, WebP, GIF, BMP, TIFF, and AVIF/HEIC where their plugin is
  installed. Others are slow or costly: JPEG 2000 holds the GIL for seconds (the whole server
  stalls), DDS and plain PPM decode in Python, ICO/ICNS hide a bigger image than they say.
- header pixels: 120 MP (CAPTIONER_MAX_PIXELS), checked before anything is decoded. JPEGs
  decode at 1/2..1/8 scale (draft), so a JPEG at the limit costs ~8 MB.
- one decode's memory: 256 MB (CAPTIONER_MAX_DECODE_MB), estimated from the header by
  `decode_cost`. Other formats cannot be decoded at reduced size in Pillow (no scaled WebP,
  PNG, AVIF decoding), so they cost, per pixel: 1 byte grey or palette, 4 RGB(A), plus 13 for
  WebP and 6 for AVIF/HEIC (the decoder's own canvases), plus 8 bytes per row: ~60 MP for an
  RGB PNG or TIFF, 15 MP for a WebP, 24 MP for an AVIF. Turning, converting and reducing run
  in 1 MP stripes (16 MB), so what is kept (at most ~7 MP) is the only other copy.
- all decodes in flight in this process: 1.5 x that (384 MB); a decode waits its turn, and
  the server answers 503 if it has waited 30 s.
- slow decoders: an RLE-compressed BMP is decoded in Python (~0.5 s per MP): 2 MP.
- TIFF: at most 65,536 numbers in one tag (PIL builds a Python object per strip before any
  check: 2 million one-row strips cost 4 s and 660 MB at open).
- CPU time of one decode: 5 s, for Python-level loops left (a PNG of a million empty chunks).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import struct
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO

from PIL import Image, features

from ..core.errors import ConfigError, DecodeBusy

MAX_PIXELS = 120_000_000
MAX_PIXELS_ENV = "CAPTIONER_MAX_PIXELS"
# Why 256 MB: a ~60 MP RGB PNG or TIFF (4 bytes/pixel), a 15 MP WebP (17 bytes/pixel: libwebp's
# canvases + PIL's copy) or a 24 MP AVIF; phone and camera photos in those formats are smaller,
# and two decodes at once (the server's decoding threads) stay under half a gigabyte.
MAX_DECODE_MB = 256
MAX_DECODE_MB_ENV = "CAPTIONER_MAX_DECODE_MB"
BUDGET_FACTOR = 1.5  # all decodes in flight: one at the limit plus one half as big
MAX_DECODE_SECONDS = 5.0  # CPU time of one decode; what is left to bound once pixels are
# PIL decoder name -> (what it reads, pixel cap): decoders written in Python (~0.5 s per MP).
SLOW_DECODERS = {"bmp_rle": ("an RLE-compressed BMP", 2_000_000)}
MAX_TIFF_VALUES = 65_536  # numbers in one TIFF tag (strip or tile offsets, in practice)

# PIL format -> the name users know, in the order the error lists them. AVIF is Pillow's own
# plugin (built with libavif), HEIF is pillow-heif's when it is installed and registered.
PHOTO_FORMATS = {
    "JPEG": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
    "AVIF": "AVIF",
    "HEIF": "HEIC",
}
ALIASES = {"MPO": "JPEG"}  # camera JPEGs with a multi-picture index open as MPO
_EXTRA_BYTES = {"WEBP": 13, "AVIF": 6, "HEIF": 6}  # the decoder's own buffers, per pixel
_ROW_BYTES = 8  # PIL keeps a pointer per row: a 1 x 119,000,000 image is 0.95 GB of them
WORKING_BYTES = 16 << 20  # stripes converted at a time (images._normalise) and their copies
_HEIF_TRIED = False
_HEIC_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1")


def _env_number(name: str, default: float, example: str) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:  # "200000000", "200_000_000" and "2e8" all mean 200 MP
        value = float(text.replace("_", ""))
    except ValueError:
        value = 0
    if not 0 < value < float("inf"):
        raise ConfigError(
            f"{name}={text!r} is not a positive number; use e.g. {example} or unset it"
        )
    return value


def pixel_limit(max_pixels: int | None = None) -> int:
    """The decoding limit in pixels: `max_pixels`, else $CAPTIONER_MAX_PIXELS, else MAX_PIXELS."""
    if max_pixels is None:
        max_pixels = int(_env_number(MAX_PIXELS_ENV, MAX_PIXELS, str(MAX_PIXELS)))
        if max_pixels < 1:
            raise ConfigError(f"{MAX_PIXELS_ENV} must be at least 1 pixel; unset it for 120 MP")
    if max_pixels < 1:
        raise ConfigError(f"max_pixels must be at least 1, got {max_pixels}")
    return int(max_pixels)


def decode_limit() -> int:
    """One decode's memory limit in bytes: $CAPTIONER_MAX_DECODE_MB, else MAX_DECODE_MB."""
    return int(_env_number(MAX_DECODE_MB_ENV, MAX_DECODE_MB, str(MAX_DECODE_MB)) * (1 << 20))


def accepted_formats() -> list[str]:
    """PIL format names accepted here: the photo formats whose plugin is installed."""
    global _HEIF_TRIED
    if not _HEIF_TRIED:  # pillow-heif is optional: HEIC photos once it is installed
        _HEIF_TRIED = True
        with contextlib.suppress(ImportError):
            from pillow_heif import register_heif_opener

            register_heif_opener()
    Image.init()
    return [f for f in PHOTO_FORMATS if f in Image.OPEN and (f != "AVIF" or _avif_built())]


@functools.cache
def _avif_built() -> bool:
    return bool(features.check("avif"))  # Pillow has the plugin, not always libavif


def accepted_text() -> str:
    return ", ".join(PHOTO_FORMATS[fmt] for fmt in accepted_formats())


def format_of(im: Image.Image) -> str:
    fmt = im.format or ""
    return ALIASES.get(fmt, fmt)


def other_format(head: bytes) -> str | None:
    """The name of the (refused) format whose signature `head` has, if any: for the error."""
    if head[4:8] == b"ftyp" and head[8:12] in _HEIC_BRANDS:
        return "HEIC (install pillow-heif to read it)"
    Image.init()
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(head) is True:
                return fmt
        except Exception:  # a plugin's signature check is no reason to fail the upload
            continue
    return None


def decode_cost(im: Image.Image, kept_pixels: int) -> int:
    """Peak bytes of decoding `im` (opened, after draft) at its present size, converting it in
    stripes and keeping `kept_pixels` RGB pixels: its pixels in PIL's layout, the decoder's own
    buffers, a pointer per row, the stripes and what is kept."""
    w, h = im.size
    mode = im.mode
    stored = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    per_pixel = stored + _EXTRA_BYTES.get(format_of(im), 0)
    # What is kept: in its own mode (at most 4 bytes a pixel), then as RGB.
    return w * h * per_pixel + (w + h) * _ROW_BYTES + WORKING_BYTES + 8 * kept_pixels


def tiff_problem(fp: BinaryIO) -> str | None:
    """Why PIL must not open this TIFF (a tag of more than MAX_TIFF_VALUES numbers, or more
    than 4,096 tags: PIL builds one Python object per strip before anything is checked), or
    None. Reads the first directory only, and leaves `fp` at the start."""
    try:
        head = fp.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 16:
            return None
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        fp.seek(
            struct.unpack(order + "Q", head[8:16])[0]
            if big
            else struct.unpack(order + "I", head[4:8])[0]
        )
        count_fmt, entry = (order + "Q", order + "HHQ") if big else (order + "H", order + "HHI")
        raw = fp.read(struct.calcsize(count_fmt))
        if len(raw) < struct.calcsize(count_fmt):
            return None
        (entries,) = struct.unpack(count_fmt, raw)
        if entries > 4096:
            return f"its first directory has {entries:,} tags (at most 4,096)"
        size = 20 if big else 12
        table = fp.read(entries * size)
        for i in range(0, len(table) - size + 1, size):
            tag, kind, count = struct.unpack_from(entry, table, i)
            if kind not in (1, 2, 6, 7) and count > MAX_TIFF_VALUES:  # not bytes or text
                return f"tag {tag} holds {count:,} numbers (at most {MAX_TIFF_VALUES:,})"
        return None
    finally:
        fp.seek(0)


class DecodeBudget:
    """Bytes of decoding in flight across all threads of this process. A decode waits, first
    come first served, until its cost fits (a cost over the whole budget waits for an empty
    budget); with a `wait`, DecodeBusy when it has not fitted within that many seconds."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty, with new locks (a forked child must not inherit one held by another thread)."""
        self._cond = threading.Condition()
        self._used = 0
        self._queue: list[int] = []
        self._tickets = itertools.count()

    @property
    def used(self) -> int:
        return self._used

    @contextlib.contextmanager
    def take(self, cost: int, total: int, wait: float | None = None) -> Iterator[None]:
        cost = min(cost, total)
        ticket = next(self._tickets)
        with self._cond:
            self._queue.append(ticket)
            fits = self._cond.wait_for(
                lambda: self._queue[0] == ticket and self._used + cost <= total, wait
            )
            self._queue.remove(ticket)
            self._cond.notify_all()  # the next in line may fit now
            if not fits:
                raise DecodeBusy(
                    f"images being decoded already use the memory budget ({total >> 20} MB, "
                    f"1.5 x {MAX_DECODE_MB_ENV}) and none finished within {wait:g} s; retry in "
                    "a few seconds, or send fewer or smaller images at once"
                )
            self._used += cost
        try:
            yield
        finally:
            with self._cond:
                self._used -= cost
                self._cond.notify_all()


BUDGET = DecodeBudget()


class CpuTimeExceeded(Exception):
    """Raised inside a decoding thread that used up its CPU time (see `CpuDeadline`)."""


class _Watchdog:
    """One daemon thread that checks the CPU time of the threads inside a `CpuDeadline` and
    raises CpuTimeExceeded in a thread over its limit, at its next Python instruction (C
    decoding runs to its end: the pixel limits bound it). Its lock is a plain C lock on
    purpose: an exception delivered inside a Python-level __enter__ could leave it held."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Nothing armed, no thread yet, new locks (after a fork the thread is gone)."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._armed: dict[int, list] = {}  # thread id -> [clock, deadline, fired]
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        tid = threading.get_ident()
        try:
            clock = time.pthread_getcpuclockid(tid)
            start = time.clock_gettime(clock)
        except (AttributeError, OSError):  # no per-thread CPU clock here: wall time instead
            clock, start = None, time.monotonic()
        with self._lock:
            self._armed[tid] = [clock, start + seconds, False]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="captioner-cpu", daemon=True)
                self._thread.start()
            self._wake.set()

    def disarm(self) -> None:
        """Leave the deadline; an exception raised but not yet delivered is withdrawn."""
        tid = threading.get_ident()
        with self._lock:
            item = self._armed.pop(tid, None)
            if item is not None and item[2]:
                _async_raise(tid, None)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                if not self._armed:
                    self._wake.clear()
                    continue
                for tid, item in self._armed.items():
                    clock, deadline, fired = item
                    try:
                        now = time.clock_gettime(clock) if clock is not None else time.monotonic()
                    except OSError:  # the thread is gone
                        continue
                    if not fired and now > deadline:
                        item[2] = True
                        _async_raise(tid, CpuTimeExceeded)
            time.sleep(0.05)


def _async_raise(tid: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(tid), ctypes.py_object(exc) if exc is not None else None
    )


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # data-loader workers are forked from a decoding process
    os.register_at_fork(after_in_child=lambda: (BUDGET.reset(), _WATCHDOG.reset()))


class CpuDeadline:
    """`with CpuDeadline(s):` runs its body with at most `s` seconds of this thread's CPU
    time, else CpuTimeExceeded. Whoever catches CpuTimeExceeded calls `CpuDeadline.leave()`
    (it may have been delivered before __exit__ could withdraw it)."""

    def __init__(self, seconds: float = MAX_DECODE_SECONDS) -> None:
        self.seconds = seconds

    def __enter__(self) -> CpuDeadline:
        _WATCHDOG.arm(self.seconds)
        return self

    def __exit__(self, *exc: object) -> None:
        _WATCHDOG.disarm()

    @staticmethod
    def leave() -> None:
        _WATCHDOG.disarm()
