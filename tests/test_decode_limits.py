"""Hostile images of issue 20, generated here (tests/bombs.py): files whose header passes the
pixel limit but whose decode would take gigabytes, formats that are slow to decode or hide a
bigger image than they say, and the limits that bound them (vision/limits.py), through the
Python API, the CLI and a real server over HTTP; plus the server's own limits on connections
and slow bodies."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import bombs
import numpy as np
import pytest
from conftest import EXIF_STORED, wait_until_serving
from PIL import Image, features

from captioner.core.errors import ConfigError, DecodeBusy, ImageFormatRefused, ImageTooLarge
from captioner.vision import images, limits
from captioner.vision.images import encoder_image, open_image, resize_center_crop

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224
needs_avif = pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")


def _avif() -> bytes:
    return bombs.avif(6000) if features.check("avif") else b""


# name -> (bytes, the error, words of its message). Each passes the 120 MP header check.
HOSTILE = {
    "webp-16383x7000.webp": (
        lambda: bombs.webp_lossless_bomb(16383, 7000),
        ImageTooLarge,
        "decoding this 16383x7000 WebP (114.7 MP, at full size",
    ),
    "tall-1x119000000.png": (bombs.png_strip_bomb, ImageTooLarge, "1x119000000 PNG (119.0 MP"),
    "rgba-10950.png": (lambda: bombs.rgba_png_bomb(10950), ImageTooLarge, "with CAPTIONER_MAX"),
    "avif-6000.avif": (_avif, ImageTooLarge, "6000x6000 AVIF"),
    "image.jp2": (lambda: bombs.jpeg2000(512), ImageFormatRefused, "JPEG2000 images are not"),
    "icon.ico": (
        lambda: bombs.ico_holding(bombs.png_bomb(15000)),
        ImageFormatRefused,
        "ICO images are not accepted, only photos in JPEG, PNG, WebP, GIF, BMP, TIFF",
    ),
    "icon.icns": (
        lambda: bombs.icns_holding(bombs.png_bomb(15000)),
        ImageFormatRefused,
        "ICNS images",
    ),
    "texture.dds": (bombs.dds, ImageFormatRefused, "DDS images are not accepted"),
    "plain.pgm": (lambda: bombs.plain_ppm(1000, 1000), ImageFormatRefused, "convert it to JPEG"),
    "rle-2000x1500.bmp": (
        lambda: bombs.bmp_rle8(2000, 1500),
        ImageTooLarge,
        "in an RLE-compressed BMP, which is decoded slowly, is over its limit of 2 MP",
    ),
    "strips.tif": (
        lambda: bombs.tiff_strips(100_000),
        ImageTooLarge,
        "tag 273 holds 100,000 numbers (at most 65,536)",
    ),
}


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    for name, (make, _, _) in HOSTILE.items():
        if data := make():
            (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize("name", HOSTILE)
def test_each_hostile_file_is_refused_from_its_header_and_says_how_to_fix(hostile_dir, name):
    path = hostile_dir / name
    if not path.exists():
        pytest.skip("Pillow built without AVIF")
    _, error, words = HOSTILE[name]
    start = time.perf_counter()
    with pytest.raises(error) as err:
        open_image(path, SIZE)
    assert time.perf_counter() - start < 0.5
    message = str(err.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message
    assert re.search(r"CAPTIONER_MAX_DECODE_MB|save it|convert it|send it", message), message


def peak_of(code: str, *args: str) -> tuple[float, str]:
    """Run `code` in a fresh interpreter; (its peak RSS growth in MB, its output)."""
    probe = (
        "import re, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "def rss(key):\n"
        "    text = open('/proc/self/status').read()\n"
        "    return int(re.search(key + r':\\s+(\\d+)', text).group(1)) / 1024\n"
        "import bombs, numpy, PIL.Image\n"
        "from captioner.vision.images import open_image\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = rss('VmRSS')\n" + code + "\nprint(rss('VmHWM') - before)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "tests"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    *out, peak = res.stdout.split("\n")[:-1]
    return float(peak), "\n".join(out)


def test_refusing_every_hostile_file_costs_no_memory(hostile_dir):
    code = (
        "import pathlib\n"
        "for f in sorted(pathlib.Path(sys.argv[2]).iterdir()):\n"
        "    try:\n"
        "        open_image(f, 224)\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__)\n"
    )
    peak, out = peak_of(code, str(hostile_dir))
    assert len(out.split()) == len(list(hostile_dir.iterdir()))
    assert peak < 60, peak  # before: +1,750 MB for the WebP alone


def test_a_palette_png_with_transparency_decodes_in_a_tenth_of_the_memory():
    # 10950x10950 palette + tRNS: PIL made it RGBA (4 bytes/pixel), then RGBa to reduce it:
    # +1,027 MB. Now it is converted and reduced in stripes: its 1 byte/pixel and little more.
    code = (
        "im = open_image(__import__('io').BytesIO(bombs.palette_png_bomb(10950)), 224)\n"
        "print(im.size, numpy.asarray(im).min())\n"
    )
    peak, out = peak_of(code)
    assert out == "(685, 685) 255"  # the transparent palette entry shows as white
    assert peak < 200, peak


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stripes_turn_and_reduce_exactly_like_the_whole_image(orientation):
    rng = np.random.default_rng(orientation)
    upright = Image.fromarray(rng.integers(0, 256, (2101, 3151, 3), dtype=np.uint8))
    stored = upright.transpose(EXIF_STORED[orientation]) if orientation in EXIF_STORED else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif, compress_level=1)
    got = open_image(io.BytesIO(buf.getvalue()), SIZE)
    _, _, fx, fy = images._geometry(*upright.size, SIZE)
    assert (fx, fy) == (3, 3)  # several stripes of whole 3x3 blocks, and a partial edge
    want = upright.reduce((fx, fy))  # what the whole image gave: turned, then reduced
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert np.array_equal(
        np.asarray(resize_center_crop(got, SIZE)),
        np.asarray(resize_center_crop(upright, SIZE)),
    )


def test_encoder_image_is_what_the_encoder_sees():
    data = bombs.encoded(Image.new("RGB", (3000, 2000), (200, 40, 40)), "PNG")
    small = encoder_image(io.BytesIO(data), SIZE)
    assert small.size == (SIZE, SIZE) and small.mode == "RGB"
    full = resize_center_crop(open_image(io.BytesIO(data), SIZE), SIZE)
    assert np.array_equal(np.asarray(small), np.asarray(full))


def test_a_small_rle_bmp_still_decodes():
    r, g, b = np.asarray(open_image(io.BytesIO(bombs.bmp_rle8(300, 200)), SIZE)).mean((0, 1))
    assert (round(r), round(g), round(b)) == (220, 160, 40)  # palette entry 1 is BGR 40,160,220


def test_cpu_time_of_the_header_is_bounded_and_leaves_the_thread_clean(monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODE_SECONDS", 0.3)
    data = bombs.png_of_empty_chunks(400_000)  # ~1.4 s of PIL's chunk loop
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"took more than 0.3 s of CPU time"):
        open_image(io.BytesIO(data), SIZE)
    assert time.perf_counter() - start < 1.0
    time.sleep(0.2)  # nothing left pending for this thread: no stray exception arrives
    assert not limits._WATCHDOG._armed
    assert open_image(io.BytesIO(bombs.png_zeros(64, 64)), SIZE).size == (64, 64)


def test_the_budget_waits_in_turn_then_says_busy():
    budget = limits.DecodeBudget()
    order = []
    with budget.take(80, 100):
        waiter = threading.Thread(target=lambda: order.append(_take(budget, 50, 5)))
        waiter.start()
        time.sleep(0.1)
        assert not order and budget.used == 80  # 80 + 50 > 100: it waits
        busy = pytest.raises(DecodeBusy, match=r"retry in a few seconds")
        with busy, budget.take(10, 100, wait=0.2):  # it fits, but the 50 came first
            pass
    waiter.join(5)
    assert order == ["taken"] and budget.used == 0
    with budget.take(500, 100, wait=0):  # more than the whole budget: alone
        assert budget.used == 100


def _take(budget: limits.DecodeBudget, cost: int, wait: float) -> str:
    with budget.take(cost, 100, wait):
        return "taken"


def test_concurrent_decodes_stay_within_the_budget(monkeypatch):
    monkeypatch.setenv("CAPTIONER_MAX_DECODE_MB", "64")  # budget 96 MB; each decode ~48 MB
    data = bombs.png_zeros(2400, 3000, colour=2)
    seen, inner = [], images._decode

    def watched(im, size):
        seen.append(limits.BUDGET.used)
        time.sleep(0.05)
        return inner(im, size)

    monkeypatch.setattr(images, "_decode", watched)
    threads = [threading.Thread(target=open_image, args=(io.BytesIO(data), SIZE)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and max(seen) <= 96 << 20 and limits.BUDGET.used == 0


def _size_of(data: bytes) -> tuple[int, int]:
    return open_image(io.BytesIO(data), SIZE).size


def test_a_forked_worker_decodes_even_if_a_lock_was_held_at_the_fork():
    import multiprocessing

    data = bombs.png_zeros(64, 64)
    assert _size_of(data) == (64, 64)  # the watchdog thread runs in this process now
    held = (limits.BUDGET._cond, limits._WATCHDOG._lock)  # as another thread might at the fork
    with held[0], held[1], multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_size_of, (data,)).get(timeout=60) == (64, 64)


def test_limits_come_from_the_environment_and_bad_values_fail_clearly(monkeypatch):
    data = bombs.png_zeros(1000, 1000, colour=2)  # 4 MB of pixels, 16 MB of stripes, 8 kept
    assert open_image(io.BytesIO(data), SIZE).size == (1000, 1000)
    monkeypatch.setenv("CAPTIONER_MAX_DECODE_MB", "20")
    with pytest.raises(ImageTooLarge, match=r"~28 MB, over .* raise the limit to 28 with CAPT"):
        open_image(io.BytesIO(data), SIZE)
    for bad in ("lots", "0", "-1", "inf"):
        monkeypatch.setenv("CAPTIONER_MAX_DECODE_MB", bad)
        with pytest.raises(ConfigError, match="CAPTIONER_MAX_DECODE_MB"):
            limits.decode_limit()


@needs_avif
def test_an_avif_photo_within_the_limit_decodes():
    data = bombs.encoded(Image.new("RGB", (1200, 800), (30, 160, 60)), "AVIF", quality=90)
    r, g, b = np.asarray(open_image(io.BytesIO(data), SIZE)).mean((0, 1))
    assert g > 130 and r < 60 and b < 90


def test_python_api_names_the_file_and_the_fix(hostile_dir):
    from captioner import Captioner

    cap = Captioner.load()
    bomb = hostile_dir / "webp-16383x7000.webp"
    with pytest.raises(ImageTooLarge, match=rf"^{re.escape(str(bomb))}: decoding this"):
        cap.caption([bomb])


def test_cli_refuses_each_hostile_file_in_one_line(hostile_dir):
    files = sorted(str(f) for f in hostile_dir.iterdir())
    res = subprocess.run(
        [sys.executable, "-m", "captioner", "caption", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(line[7:].split(": ")[0] for line in lines) == files, res.stderr
    for line in lines:
        _, _, words = HOSTILE[Path(line[7:].split(": ")[0]).name]
        assert words in line, line
    assert res.stdout == ""


# A real server: the memory attack, half-sent uploads, and what HTTP answers.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):

    port = free_port()
    state = tmp_path_factory.mktemp("server")
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--port", str(port)]
        + ["--state-dir", str(state), "--disable-training", "--body-timeout", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, proc)
    yield url, proc, port
    proc.terminate()
    proc.wait(timeout=30)


def _attack_module():
    path = ROOT / "bench" / "memory_attack.py"
    spec = importlib.util.spec_from_file_location("memory_attack", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_memory_attack_is_answered_within_500_mb_and_healthz_stays_fast(server):
    url, proc, _ = server
    attack = _attack_module()
    photo = bombs.encoded(Image.new("RGB", (640, 480), (90, 140, 200)), "JPEG")
    figures = attack.attack(url, proc.pid, photo)
    attack.report(figures)
    codes = {label: code for label, (code, _, _) in figures["results"].items()}
    assert set(codes.values()) == {200}, codes
    assert figures["healthz_max_s"] < 1.0
    assert figures["peak_above_warm_mb"] < 500
    rows = figures["results"]["100-png"][2]
    assert len(rows) == 100 and all(r["caption"] for r in rows)
    refused = [figures["results"][k][2][0]["error"] for k in codes if k != "100-png"]
    assert all(("MAX_DECODE_MB" in e) or ("not accepted" in e) for e in refused), refused


def test_http_answers_each_hostile_file_with_its_reason(server, hostile_dir):
    import httpx

    url, _, _ = server
    files = sorted(hostile_dir.iterdir())
    parts = [("files", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
    parts.append(("files", ("notes.jpg", b"not an image", "image/jpeg")))
    half = bombs.encoded(Image.new("RGB", (300, 200), "red"), "JPEG")[:300]
    parts.append(("files", ("half.jpg", half, "image/jpeg")))
    res = httpx.post(url + "/api/captions", files=parts, timeout=120)
    assert res.status_code == 200, res.text
    rows = {r["image"]: r for r in res.json()}
    for f in files:
        _, _, words = HOSTILE[f.name]
        assert rows[f.name]["caption"] is None and words in rows[f.name]["error"], rows[f.name]
    accepted = "JPEG, PNG, WebP, GIF, BMP, TIFF" + (", AVIF" if features.check("avif") else "")
    unreadable = f"cannot read image (not an image, or not one of {accepted})"
    assert rows["notes.jpg"]["error"] == unreadable  # the formats said once, no hint added
    assert rows["half.jpg"]["error"].startswith("cannot read image (the file is truncated")
    assert rows["half.jpg"]["error"].endswith(f"; send a photo as {accepted}")


def _half_sent_upload(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /api/captions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000000\r\n\r\n"
        b"--b\r\nContent-Disposition: form-data; name=files; filename=a.jpg\r\n\r\n\xff\xd8"
    )
    return s


def _status(s: socket.socket, timeout: float) -> str:
    s.settimeout(timeout)
    try:
        return s.recv(64).decode("latin-1").split(" ")[1]
    except (TimeoutError, IndexError):
        return "none"


def test_half_sent_uploads_time_out_and_healthz_keeps_answering(server):
    import httpx

    url, proc, port = server
    fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    held = [_half_sent_upload(port) for _ in range(80)]  # 64 are handled, 16 are refused
    try:
        start = time.perf_counter()
        health = httpx.get(url + "/healthz", timeout=5)
        assert health.status_code == 200 and time.perf_counter() - start < 1.0
        codes = [_status(s, 6) for s in held]
        assert codes.count("503") == 16 and codes.count("408") == 64, codes
    finally:
        for s in held:
            s.close()
    time.sleep(1)
    assert len(os.listdir(f"/proc/{proc.pid}/fd")) <= fds + 4
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200


def test_a_full_decoding_budget_is_a_503_that_says_to_retry(monkeypatch, tmp_path):
    from starlette.testclient import TestClient

    from captioner.serving import server as server_module
    from captioner.serving.routes import captions

    def busy(*args, **kwargs):
        raise DecodeBusy("images being decoded already use the memory budget; retry shortly")

    monkeypatch.setattr(captions, "encoder_image", busy)
    app = server_module.create_app(server_module.ServerSettings(state_dir=tmp_path))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        data = bombs.encoded(Image.new("RGB", (64, 64)), "JPEG")
        res = client.post("/api/captions", files=[("files", ("a.jpg", data, "image/jpeg"))])
    assert res.status_code == 503 and res.headers["retry-after"] == "10"
    assert "retry shortly" in res.json()["detail"]


def test_the_connection_cap_fits_under_the_open_file_limit(monkeypatch, capsys):
    import resource

    from captioner.cli.serve import _connection_cap

    limits_now = {"soft": 1024, "hard": 4096}

    def setrlimit(_, value):
        limits_now["soft"] = value[0]

    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits_now["soft"], limits_now["hard"]))
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert _connection_cap(512) == 512 and limits_now["soft"] == 1024  # room enough already
    assert _connection_cap(2000) == 2000 and limits_now["soft"] == 2256  # raised to fit
    limits_now.update(soft=300, hard=300)
    assert _connection_cap(512) == 44
    assert "connections capped at 44: the open-file limit is 300" in capsys.readouterr().out
