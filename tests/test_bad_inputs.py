"""The bad-input corpus, generated here (nothing downloaded or committed), through every
interface: the CLI, the Python API and a real `captioner serve` over HTTP. Each file gets a
caption or a clear per-file error; decompression bombs are refused from their header."""

from __future__ import annotations

import csv
import functools
import io
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from bombs import png, png_bomb  # also imported from here by test_images
from conftest import wait_until_serving
from PIL import Image

from captioner import Captioner
from captioner.core.errors import ImageError, ImageTooLarge

CLEAN = re.compile(r"^[a-z0-9']+( [a-z0-9']+){2,19}$")  # 3-20 plain words, nothing else
CAPTION, ERROR = "caption", "error"


def photo() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut())  # a real 512x512 photo


def png_rows(array: np.ndarray) -> bytes:
    """A 16-bit PNG of a (H, W) or (H, W, 3) uint16 array: filter byte 0, big-endian samples."""
    h, w = array.shape[:2]
    rows = array.astype(">u2").reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    return png(w, h, 16, 2 if array.ndim == 3 else 0, zlib.compress(raw))


def saved(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def gif_js_polyglot() -> bytes:
    """A GIF that is also JavaScript: its width bytes are '/*', a comment closes it."""
    strip = Image.new("P", (0x2A2F, 10), 0)  # width 10799 = b"/*" little-endian
    strip.putpalette([200, 30, 30] * 256)
    data = saved(strip, "GIF", comment=b"*/=alert(document.domain);/*")
    assert data[6:8] == b"/*"
    return data


def jpeg_zip_polyglot() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.js", "alert(1)")
    data = saved(photo(), "JPEG", quality=90) + buf.getvalue()
    assert zipfile.is_zipfile(io.BytesIO(data))
    return data


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "lime", "blue")]
    return saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


@functools.cache
def corpus() -> dict[str, tuple[bytes, str, str]]:
    """name -> (file bytes, expected outcome, class). Built in about a second."""
    good = photo()
    jpeg = saved(good, "JPEG", quality=90)
    png8 = saved(good, "PNG")
    grey = np.asarray(good.convert("L"), dtype=np.uint16) * 257
    rgb = np.asarray(good, dtype=np.uint16) * 257
    icc = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    html = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
    bad_exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x02\x00\x12\x01\x02\x00\xff\xff\xff\x7f"
    return {
        "empty.jpg": (b"", ERROR, "not an image"),
        "notes.jpg": (b"remember to buy milk\n", ERROR, "not an image"),
        "page.jpg": (html, ERROR, "not an image"),
        "drawing.svg": (svg, ERROR, "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], ERROR, "truncated"),
        "truncated.png": (png8[: len(png8) // 2], ERROR, "truncated"),
        "polyglot-gif-js.gif": (gif_js_polyglot(), CAPTION, "polyglot"),
        "polyglot-jpeg-zip.jpg": (jpeg_zip_polyglot(), CAPTION, "polyglot"),
        "bomb-40000.png": (png_bomb(40000), ERROR, "bomb"),
        "bomb-13000.png": (png_bomb(13000), ERROR, "bomb"),
        "tiny-1x1.png": (saved(Image.new("RGB", (1, 1), "orange"), "PNG"), CAPTION, "geometry"),
        "strip-30000x10.png": (saved(good.resize((30000, 10)), "PNG"), CAPTION, "geometry"),
        "cmyk.jpg": (saved(good.convert("CMYK"), "JPEG"), CAPTION, "mode"),
        "rgb16.png": (png_rows(rgb), CAPTION, "mode"),
        "grey16.png": (png_rows(grey), CAPTION, "mode"),
        "bilevel.png": (saved(good.convert("1"), "PNG"), CAPTION, "mode"),
        "animated.gif": (animated_gif(), CAPTION, "mode"),
        "rotated.jpg": (
            # a phone held upright: pixels stored turned left, Orientation 6 turns them back
            saved(good.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif_orientation(6)),
            CAPTION,
            "metadata",
        ),
        "corrupt-exif.jpg": (saved(good, "JPEG", exif=bad_exif), CAPTION, "metadata"),
        "huge-icc.jpg": (saved(good, "JPEG", icc_profile=icc), CAPTION, "metadata"),
    }


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad-inputs")
    for name, (data, _, _) in corpus().items():
        (d / name).write_bytes(data)
    return d


def expected(outcome: str) -> set[str]:
    return {name for name, (_, want, _) in corpus().items() if want == outcome}


def test_the_corpus_is_small_and_the_bombs_are_real(bad_dir):
    sizes = {f.name: f.stat().st_size for f in bad_dir.iterdir()}
    assert sum(sizes.values()) < 12_000_000, sizes
    assert sizes["bomb-13000.png"] < 200_000 and sizes["bomb-40000.png"] < 2_000_000
    header = (bad_dir / "bomb-40000.png").read_bytes()[16:24]
    assert struct.unpack(">II", header) == (40000, 40000)
    # The stream really inflates to every row (checked without keeping it).
    data = (bad_dir / "bomb-13000.png").read_bytes()
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    inflate, size = zlib.decompressobj(), 0
    for i in range(0, len(idat), 1 << 16):
        size += len(inflate.decompress(idat[i : i + (1 << 16)], 1 << 24))
        while inflate.unconsumed_tail:
            size += len(inflate.decompress(inflate.unconsumed_tail, 1 << 24))
    assert inflate.eof and size == 13000 * 13001


def test_the_40000_bomb_is_refused_from_its_header_in_milliseconds(bad_dir):
    from captioner.vision.images import open_image

    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"bomb-40000.png: 1600000000 pixels .*CAPTIONER_MAX"):
        open_image(bad_dir / "bomb-40000.png", 224)
    assert time.perf_counter() - start < 0.5


@pytest.mark.slow
def test_python_api_captions_or_refuses_each_file(bad_dir):
    cap = Captioner.load()
    outcomes = {}
    for f in sorted(bad_dir.iterdir()):
        try:
            (text,) = cap.caption(f)
            assert CLEAN.match(text), (f.name, text)
            outcomes[f.name] = CAPTION
        except ImageError as exc:
            assert str(exc).startswith(str(f)), exc  # names the file
            assert "\n" not in str(exc)
            outcomes[f.name] = ERROR
    assert {n for n, o in outcomes.items() if o == CAPTION} == expected(CAPTION)
    assert {n for n, o in outcomes.items() if o == ERROR} == expected(ERROR)


@pytest.mark.slow
def test_cli_captions_the_rest_and_names_each_bad_file(bad_dir, tmp_path):
    out = tmp_path / "out.csv"
    res = subprocess.run(
        [sys.executable, "-m", "captioner", "caption", str(bad_dir), str(bad_dir / "drawing.svg")]
        + ["--csv", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr, res.stderr
    errors = res.stderr.splitlines()[:-1]  # the last line says where the CSV went
    assert all(line.startswith(f"error: {bad_dir}/") for line in errors), errors
    assert {Path(line[7:].split(":")[0]).name for line in errors} == expected(ERROR)
    assert "bomb-13000.png: 13000x13000 pixels (169.0 MP) is over the limit" in res.stderr
    assert "raise the limit to 1600000000 with CAPTIONER_MAX_PIXELS" in res.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0][:2] == ["image", "caption"]  # extra columns (confidence, tags) come after
    assert {Path(r[0]).name for r in rows[1:]} == expected(CAPTION)
    assert all(CLEAN.match(r[1]) for r in rows[1:])


def test_16bit_grey_is_not_white_and_rotation_is_undone(bad_dir):
    from captioner.vision.images import open_image

    grey = np.asarray(open_image(bad_dir / "grey16.png", 224))
    assert 60 < grey.mean() < 200 and grey.std() > 30
    upright = np.asarray(photo(), dtype=np.int16)
    rotated = np.asarray(open_image(bad_dir / "rotated.jpg", 224), dtype=np.int16)
    assert rotated.shape == upright.shape and np.abs(rotated - upright).mean() < 4


# The HTTP interface: a real server process, all files in one multipart request.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


# The server's peak RSS bound while bombs are uploaded. torch's import alone is ~0.5 GB on a
# CUDA build; one admitted 13000x13000 bomb costs 169 MB while it decodes, then ~0.5 MB.
SERVER_RSS_BOUND_MB = 1500


@pytest.fixture(scope="module")
def server(tmp_path_factory):

    state = tmp_path_factory.mktemp("server-state")
    port = free_port()
    # Limit raised to 170 MP so the 13000x13000 bombs are really decoded: the worst case.
    env = {**os.environ, "CAPTIONER_MAX_PIXELS": "170000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--host", "127.0.0.1"]
        + ["--port", str(port), "--state-dir", str(state), "--disable-training"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, proc)
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


def post(url: str, files: list[tuple[str, bytes]]) -> list[dict]:
    import httpx

    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    res = httpx.post(url + "/api/captions", files=parts, timeout=300)
    assert res.status_code == 200, res.text
    return res.json()


@pytest.mark.slow
def test_http_api_bounds_memory_on_bombs_and_answers_every_file(server, bad_dir):
    url, proc = server
    # Model loaded and a batch as big as the bombs' captioned, so what follows is decoding.
    warm = post(url, [(f"photo{i}.jpg", saved(photo(), "JPEG")) for i in range(5)])
    assert all(CLEAN.match(r["caption"]) for r in warm)
    before = peak_rss_mb(proc.pid)
    bomb = (bad_dir / "bomb-13000.png").read_bytes()
    giant = (bad_dir / "bomb-40000.png").read_bytes()
    results = post(url, [(f"bomb{i}.png", bomb) for i in range(4)] + [("giant.png", giant)])
    peak = peak_rss_mb(proc.pid)
    print(f"server peak RSS: {before:.0f} MB before the bombs, {peak:.0f} MB after")
    assert peak < SERVER_RSS_BOUND_MB, (before, peak)
    assert [bool(r.get("caption")) for r in results] == [True] * 4 + [False]
    assert results[-1]["error"]

    files = sorted(bad_dir.iterdir())
    results = post(url, [(f.name, f.read_bytes()) for f in files])
    outcomes = {r["image"]: CAPTION if r["caption"] else ERROR for r in results}
    assert all(r.get("error") for r in results if not r["caption"])
    want = {**dict.fromkeys(expected(CAPTION), CAPTION), **dict.fromkeys(expected(ERROR), ERROR)}
    want["bomb-13000.png"] = CAPTION  # this server's limit admits it
    assert outcomes == want
    assert peak_rss_mb(proc.pid) < SERVER_RSS_BOUND_MB


# Broken model folders (tests/broken_models.py): each is refused whole, once, with its reason,
# before it can caption; the listing catches what needs no weights read.

from broken_models import BROKEN, make_broken  # noqa: E402 (this section's own corpus)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_model_is_refused_whole_with_its_reason(tmp_path, name):
    import resource

    from captioner.core.errors import BundleError
    from captioner.storage.bundle import check_bundle, load_bundle

    folder = make_broken(tmp_path / name, name)
    _, reason, listed = BROKEN[name]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BundleError) as err:
        load_bundle(folder)
    message = str(err.value)
    assert reason in message and str(folder) in message, message
    assert "\n" not in message and "pydantic.dev" not in message
    # hidden_size 60000 would be a 57 GB LSTM: the shapes are read from the file's header.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB
    if listed:
        with pytest.raises(BundleError, match=re.escape(reason)):
            check_bundle(folder)
    else:
        check_bundle(folder)  # only loading the weights finds it


def test_a_model_whose_weights_are_not_finite_is_never_written(tmp_path):
    import math

    import torch

    from captioner.core.errors import BundleError
    from captioner.storage.bundle import load_bundle, save_bundle

    bundle = load_bundle(Captioner.load().bundle.path)
    weight = bundle.model.out.weight
    for value, why in ((math.nan, "NaN"), (1e6, "finite in fp32, infinite in fp16")):
        with torch.no_grad():
            saved, weight[0, 0] = weight[0, 0].item(), value
        with pytest.raises(BundleError, match=r"cannot save this model: .*/model.safetensors hol"):
            save_bundle(tmp_path / "model", bundle, "card")
        assert not (tmp_path / "model").exists(), why
        with torch.no_grad():
            weight[0, 0] = saved
    save_bundle(tmp_path / "model", bundle, "card")  # the same model, finite, is written
    assert load_bundle(tmp_path / "model").vocab.itos == bundle.vocab.itos
