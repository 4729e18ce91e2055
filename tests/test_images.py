"""vision.images: the pixel limit, bounded decoding, and correct conversion of every mode, on
real photos (scikit-image) saved by the test in each format."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from conftest import EXIF_STORED
from PIL import Image
from test_bad_inputs import exif_orientation, png, png_rows, saved

from captioner.core.errors import ConfigError, ImageError, ImageTooLarge
from captioner.vision.images import MAX_PIXELS, open_image, pixel_limit, resize_center_crop

SIZE = 224


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.coffee())  # 600x400, real


def old_preprocess(data: bytes, size: int = SIZE) -> np.ndarray:
    """What the encoder saw before bounded decoding: full decode, then PIL's own reduce."""
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (size * 2, size * 2))
    im = im.convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def decode(data: bytes, **kw) -> Image.Image:
    return open_image(io.BytesIO(data), SIZE, **kw)


def test_limit_comes_from_argument_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("CAPTIONER_MAX_PIXELS", raising=False)
    assert pixel_limit() == MAX_PIXELS == 120_000_000
    monkeypatch.setenv("CAPTIONER_MAX_PIXELS", "2e8")
    assert pixel_limit() == 200_000_000 and pixel_limit(5) == 5
    for bad in ("lots", "0", "-3", "inf"):
        monkeypatch.setenv("CAPTIONER_MAX_PIXELS", bad)
        with pytest.raises(ConfigError, match="CAPTIONER_MAX_PIXELS"):
            pixel_limit()
    with pytest.raises(ConfigError, match="max_pixels"):
        pixel_limit(0)


def test_size_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPTIONER_MAX_PIXELS", raising=False)
    # A header that claims 20000x20000 followed by garbage: refused for its size, not its data.
    path = tmp_path / "claims-225MP.png"
    path.write_bytes(png(15000, 15000, 8, 0, b"not a zlib stream"))
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge) as err:
        open_image(path, SIZE)
    assert time.perf_counter() - start < 0.2
    assert str(err.value) == (
        f"{path}: 15000x15000 pixels (225.0 MP) is over the limit of 120,000,000 pixels; to "
        "decode it anyway, raise the limit to 225000000 with CAPTIONER_MAX_PIXELS "
        "(or --max-pixels, or max_pixels=)"
    )
    # Over twice the limit PIL's own check fires first; the message is the same but for w x h.
    huge = tmp_path / "claims-400MP.png"
    huge.write_bytes(png(20000, 20000, 8, 0, b"not a zlib stream"))
    with pytest.raises(ImageTooLarge, match=r"claims-400MP.png: 400000000 pixels \(400.0 MP\)"):
        open_image(huge, SIZE)
    assert isinstance(err.value, ImageError) and isinstance(err.value, OSError)
    with pytest.raises(ImageTooLarge):  # the argument and the environment both apply
        open_image(path, SIZE, max_pixels=1000)
    monkeypatch.setenv("CAPTIONER_MAX_PIXELS", "300000000")
    with pytest.raises(ImageError, match="cannot read image"):  # admitted, then truly decoded
        open_image(path, SIZE)


@pytest.mark.parametrize("shape", [(600, 400), (1801, 1200), (4001, 2667), (2000, 6001)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "L-PNG", "WEBP"])
def test_big_images_are_kept_small_and_the_encoder_sees_the_same_pixels(photo, shape, fmt):
    image = photo.resize(shape, Image.BICUBIC)
    image = image.convert("L") if fmt == "L-PNG" else image
    options = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}}.get(fmt, {"compress_level": 1})
    data = saved(image, fmt.split("-")[-1], **options)
    decoded = decode(data)
    assert decoded.mode == "RGB" and min(decoded.size) <= 6 * SIZE
    assert max(decoded.size) <= 4 * min(decoded.size)
    assert np.array_equal(np.asarray(resize_center_crop(decoded, SIZE)), old_preprocess(data))


def test_a_changed_image_is_not_mapped_onto_its_old_file(photo):
    decoded = decode(saved(photo.resize((4001, 2667)), "PNG", compress_level=1))
    cropped = decoded.crop((0, 0, 500, 400))  # keeps info, but is no longer the whole file
    want = old_preprocess(saved(cropped, "PNG"))
    assert np.array_equal(np.asarray(resize_center_crop(cropped, SIZE)), want)


def test_a_long_strip_is_cut_to_its_centre_and_stays_cheap(photo):
    strip = photo.resize((30000, 10))
    decoded = decode(saved(strip, "PNG"))
    assert decoded.size == (40, 10)
    out = np.asarray(resize_center_crop(decoded, SIZE), dtype=np.int16)
    centre = np.asarray(strip.crop((14995, 0, 15005, 10)).resize((SIZE, SIZE), Image.BICUBIC))
    assert out.shape == (SIZE, SIZE, 3) and np.abs(out - centre).mean() < 3
    tall = decode(saved(photo.resize((10, 30000)), "PNG"))
    assert tall.size == (10, 40)
    assert resize_center_crop(Image.new("RGB", (1, 1), "red"), SIZE).size == (SIZE, SIZE)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(photo, orientation):
    undo = EXIF_STORED
    stored = photo.transpose(undo[orientation]) if orientation in undo else photo
    data = saved(stored, "PNG", exif=exif_orientation(orientation))  # lossless: exact pixels
    assert np.array_equal(np.asarray(decode(data)), np.asarray(photo))


def test_corrupt_or_odd_exif_never_fails_the_image(photo):
    for exif in (
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x02\x00\x12\x01\x02\x00\xff\xff\xff\x7f",
        b"Exif\x00\x00MM\x00*\xff\xff\xff\xff",
        b"Exif\x00\x00" + bytes(range(256)) * 4,
    ):
        assert decode(saved(photo, "JPEG", exif=exif)).size == photo.size
    assert decode(saved(photo, "JPEG", exif=exif_orientation(9))).size == photo.size


def test_16bit_grey_is_scaled_not_clipped(photo):
    grey8 = np.asarray(photo.convert("L"))
    grey16 = grey8.astype(np.uint16) * 256 + 255 - grey8  # the low byte must not matter
    for data in (
        saved(Image.fromarray(grey16), "PNG"),  # I;16
        saved(Image.fromarray(grey16.astype(">u2")), "TIFF"),  # I;16B
        png_rows(grey16),
        saved(Image.fromarray(grey16.astype(np.int32)), "TIFF"),  # I (32-bit, 16-bit data)
    ):
        out = np.asarray(decode(data))
        assert np.array_equal(out[..., 0], grey8) and np.array_equal(out[..., 2], grey8)


def test_16bit_rgb_and_float_images(photo):
    rgb = np.asarray(photo)
    assert np.array_equal(np.asarray(decode(png_rows(rgb.astype(np.uint16) * 257))), rgb)
    grey = np.asarray(photo.convert("L"))
    floats = saved(Image.fromarray(grey.astype(np.float32) / 255), "TIFF")  # mode F, 0..1
    assert np.abs(np.asarray(decode(floats))[..., 0].astype(int) - grey).max() <= 1


def test_transparency_is_composited_on_white(photo):
    rgba = photo.convert("RGBA")
    alpha = np.full(photo.size[::-1], 255, np.uint8)
    alpha[:, :100] = 0  # left strip transparent
    rgba.putalpha(Image.fromarray(alpha))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = palette.getpixel((0, 0))
    for image in (rgba, rgba.convert("LA"), palette):
        out = np.asarray(decode(saved(image, "PNG")))
        assert (out[:, :100] == 255).all() if image is not palette else (out[0, 0] == 255).all()
        assert out[:, 200:].mean() < 250  # the rest is the photo


def test_palette_bilevel_cmyk_and_animations(photo):
    red = Image.new("RGB", (64, 48), (220, 20, 20))
    for data in (
        saved(red.convert("P"), "PNG"),
        saved(red.convert("CMYK"), "JPEG", quality=95),
        saved(red.convert("CMYK"), "TIFF"),
    ):
        r, g, b = np.asarray(decode(data)).reshape(-1, 3).mean(axis=0)
        assert r > 180 and g < 60 and b < 60, (r, g, b)
    bilevel = np.asarray(decode(saved(photo.convert("1"), "PNG")))
    assert set(np.unique(bilevel)) == {0, 255}
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "lime", "blue")]
    for fmt in ("GIF", "WEBP", "PNG"):  # animated GIF, WebP and APNG: the first frame
        data = saved(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
        r, g, b = np.asarray(decode(data)).reshape(-1, 3).mean(axis=0)
        assert r > 200 and g < 40 and b < 40, (fmt, r, g, b)


def test_icc_profiles_are_dropped_and_a_bomb_sized_one_is_a_clear_error(photo):
    icc = np.random.default_rng(1).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    out = decode(saved(photo, "JPEG", icc_profile=icc))  # 3 MB over 46 APP2 segments
    assert out.size == photo.size and "icc_profile" not in out.info
    # PNG compresses its profile; PIL refuses to inflate one over 1 MB (it could be a bomb).
    with pytest.raises(ImageError, match="cannot read image"):
        decode(saved(photo, "PNG", icc_profile=icc))


def test_unreadable_files_name_themselves(tmp_path):
    half = saved(Image.new("RGB", (300, 300)), "PNG")[:200]
    for name, data in [("empty.png", b""), ("half.png", half)]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageError, match=f"^{path}: cannot read image"):
            open_image(path, SIZE)
    with pytest.raises(ImageError, match="missing.jpg: cannot read image"):
        open_image(tmp_path / "missing.jpg", SIZE)
