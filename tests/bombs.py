"""Hostile image files, generated in memory without ever holding their pixels (shared by the
tests and bench/memory_attack.py): decompression bombs that pass a header pixel limit, formats
that are slow or costly to decode, and containers that hide a bigger image than they claim."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int, colour: int, idat: bytes, extra: bytes = b"") -> bytes:
    """A PNG from its parts (colour: 0 grey, 2 RGB, 3 palette, 6 RGBA), for what PIL cannot
    write; `extra` is chunks that go between IHDR and IDAT (PLTE, tRNS)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunks = _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def deflated_zeros(total: int) -> bytes:
    """A zlib stream of `total` zero bytes, made without holding them: after a full flush
    deflate repeats itself, so one compressed MiB of zeros is reused, and the Adler-32 of n
    zero bytes is (n mod 65521) << 16 | 1."""
    block = 1 << 20
    comp = zlib.compressobj(9)
    first = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    n, rest = divmod(total, block)
    if n == 0:
        return zlib.compress(bytes(total), 9)
    tail = comp.compress(bytes(rest)) + comp.flush(zlib.Z_FULL_FLUSH) if rest else b""
    adler = ((total % 65521) << 16) | 1
    return first + again * (n - 1) + tail + b"\x03\x00" + struct.pack(">I", adler)


def png_zeros(width: int, height: int, colour: int = 0, extra: bytes = b"") -> bytes:
    """A valid 8-bit PNG whose every pixel is zero (black, or palette entry 0)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    return png(width, height, 8, colour, deflated_zeros(height * (1 + width * channels)), extra)


def png_bomb(side: int) -> bytes:
    """A side x side grey PNG of zeros (13000: 194 KB for 169 MP)."""
    return png_zeros(side, side)


def palette_png_bomb(side: int) -> bytes:
    """A palette PNG with a transparent entry: PIL decodes it, then makes it RGBA."""
    extra = _chunk(b"PLTE", bytes([30, 120, 200]) * 2) + _chunk(b"tRNS", b"\x00")
    return png_zeros(side, side, colour=3, extra=extra)


def rgba_png_bomb(side: int) -> bytes:
    return png_zeros(side, side, colour=6)


def png_strip_bomb(height: int = 119_000_000) -> bytes:
    """A 69-byte 1 x `height` grey PNG: PIL allocates every row (and a pointer per row) before
    it finds the data missing."""
    return png(1, height, 8, 0, zlib.compress(b"\0\0"))


def webp_lossless_bomb(width: int = 16383, height: int = 7000) -> bytes:
    """A ~30-byte lossless WebP: five one-symbol prefix codes cost zero bits per pixel, so the
    whole width x height canvas decodes from nothing."""
    bits, n = 0, 0
    fields = [(width - 1, 14), (height - 1, 14), (0, 1), (0, 3)]  # size, no alpha, version 0
    fields += [(0, 1)] * 3  # no transform, no colour cache, no meta prefix codes
    fields += [(1, 1), (0, 1), (0, 1), (0, 1)] * 5  # simple code, one 1-bit symbol: 0
    for value, width_bits in fields:
        bits |= value << n
        n += width_bits
    payload = b"\x2f" + bits.to_bytes((n + 7) // 8, "little")
    payload += b"\0" * (len(payload) % 2)
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg2000(side: int) -> bytes:
    """A grey JPEG 2000 of zeros (10950: 14 KB, and seconds of decoding that hold the GIL).
    Made from a real image: `side` squared bytes are held while it is encoded."""
    return encoded(Image.new("L", (side, side)), "JPEG2000", tile_size=(1024, 1024))


def avif(side: int) -> bytes:
    """A black AVIF (side 6000: ~1 KB for 36 MP); encoding holds the image once."""
    return encoded(Image.new("RGB", (side, side)), "AVIF", speed=10, quality=10)


def ico_holding(inner_png: bytes) -> bytes:
    """An ICO whose directory says 256x256 but whose one entry is `inner_png` (any size)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner_png), 6 + 16)
    return header + entry + inner_png


def icns_holding(inner_png: bytes) -> bytes:
    """An ICNS whose 'ic10' (1024x1024) entry is `inner_png`."""
    entry = b"ic10" + struct.pack(">I", 8 + len(inner_png)) + inner_png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def bmp_rle8(width: int, height: int) -> bytes:
    """An 8-bit run-length BMP of one colour (PIL decodes RLE in pure Python: ~1 s/MP)."""
    row = b""
    for left in range(width, 0, -255):
        row += bytes([min(left, 255), 1])  # a run of palette entry 1
    data = (row + b"\x00\x00") * height + b"\x00\x01"  # end of line ..., end of bitmap
    palette = bytes([0, 0, 0, 0, 40, 160, 220, 0]) + bytes(4 * 254)
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def plain_ppm(width: int, height: int) -> bytes:
    """An ASCII ('P2') grey PPM: parsed number by number in Python."""
    return f"P2\n{width} {height}\n255\n".encode() + b"128 " * (width * height)


def dds(side: int = 64) -> bytes:
    return encoded(Image.new("RGBA", (side, side), (10, 200, 30, 255)), "DDS")


def tiff_strips(strips: int, width: int = 1) -> bytes:
    """An uncompressed grey TIFF of `strips` one-row strips (all pointing at the same row):
    8 bytes per strip, and PIL builds a Python tile per strip when it opens it."""
    offsets = 8 + 2 + 9 * 12 + 4
    counts = offsets + 4 * strips
    pixels = counts + 4 * strips
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, strips),
        (258, 3, 1, 8),
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1),  # black is zero
        (273, 4, strips, offsets),
        (277, 3, 1, 1),
        (278, 4, 1, 1),  # one row per strip
        (279, 4, strips, counts),
    ]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    body = struct.pack(f"<{strips}I", *[pixels] * strips)
    body += struct.pack(f"<{strips}I", *[width] * strips)
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + body + bytes(width)


def png_of_empty_chunks(chunks: int) -> bytes:
    """A 64x64 grey PNG preceded by `chunks` empty private chunks: PIL reads them one by one
    in Python (about 3.5 us each) before it finds the pixels."""
    extra = _chunk(b"zzZz", b"") * chunks
    return png(64, 64, 8, 0, zlib.compress(bytes(64 * 65)), extra)
