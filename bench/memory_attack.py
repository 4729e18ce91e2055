"""The memory attack of issue 20: a loopback server attacked at once by four lossless-WebP bombs
(16383x7000 in ~30 bytes), a 1x119,000,000 PNG (69 bytes), a 10950x10950 JPEG 2000 and one
request of 100 copies of a 21 KB PNG of 1343x5372, while /healthz is polled every 0.1 s.

    python bench/memory_attack.py              # the attack: peak RSS above warm, /healthz, codes
    python bench/memory_attack.py --calibrate  # decode_cost's estimate against measured peaks

Target: every request answered without a 5xx, /healthz under 1 s, peak RSS under warm + 500 MB.
To measure another checkout, run it with PYTHONPATH=that/src (the server inherits it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import bombs  # noqa: E402  (the generators the tests use)


def status_mb(pid: int, key: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) / 1024


def start_server(state: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "captioner", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--state-dir", str(state), "--disable-training"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start")


def attack_requests() -> list[tuple[str, list[tuple[str, bytes]]]]:
    """(label, files) for each request of the attack, all sent at once."""
    webp = bombs.webp_lossless_bomb(16383, 7000)
    tall = bombs.png_strip_bomb(119_000_000)
    jp2 = bombs.jpeg2000(10950)
    strip = bombs.png_zeros(1343, 5372, colour=2)
    requests = [(f"webp-bomb-{i}", [(f"bomb{i}.webp", webp)]) for i in range(4)]
    requests.append(("png-1x119M", [("tall.png", tall)]))
    requests.append(("jp2-10950", [("big.jp2", jp2)]))
    requests.append(("100-png", [(f"p{i}.png", strip) for i in range(100)]))
    return requests


def post(url: str, files: list[tuple[str, bytes]], timeout: float = 600) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(url + "/api/captions", files=parts, timeout=timeout)


def attack(url: str, pid: int, warm_photo: bytes) -> dict:
    """Warm the server, then send every attack request at once while polling /healthz and
    sampling the server's RSS. Returns the figures."""
    for _ in range(2):  # model loaded, a 5-photo batch captioned: what follows is the attack
        assert post(url, [(f"w{i}.jpg", warm_photo) for i in range(5)]).status_code == 200
    time.sleep(1)
    warm = status_mb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart VmHWM from the current RSS
    requests = attack_requests()
    results: dict[str, object] = {}
    health: list[float] = []
    peak = [warm]
    done = threading.Event()

    def send(label: str, files: list) -> None:
        t0 = time.perf_counter()
        try:
            r = post(url, files)
            json = r.headers.get("content-type", "").startswith("application/json")
            body = r.json() if json else r.text
            results[label] = (r.status_code, time.perf_counter() - t0, body)
        except httpx.HTTPError as exc:
            results[label] = (repr(exc), time.perf_counter() - t0, None)

    def poll() -> None:
        with httpx.Client(timeout=30) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):  # a timeout counts as its time
                    c.get(url + "/healthz")
                health.append(time.perf_counter() - t0)
                peak[0] = max(peak[0], status_mb(pid, "VmRSS"))
                time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=r) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    poller.join()
    hwm = max(status_mb(pid, "VmHWM"), peak[0])
    return {
        "warm_mb": warm,
        "peak_above_warm_mb": hwm - warm,
        "healthz_max_s": max(health),
        "healthz_polls": len(health),
        "wall_s": wall,
        "results": results,
    }


def report(figures: dict) -> None:
    print(f"warm RSS {figures['warm_mb']:.0f} MB")
    print(f"peak RSS above warm: {figures['peak_above_warm_mb']:.0f} MB")
    print(f"/healthz: max {figures['healthz_max_s']:.2f} s over {figures['healthz_polls']} polls")
    print(f"attack answered in {figures['wall_s']:.1f} s")
    for label, (code, seconds, body) in figures["results"].items():
        line = f"  {label}: {code} in {seconds:.1f} s"
        if isinstance(body, list):
            ok = sum(1 for r in body if r.get("caption"))
            errors = sorted({r["error"][:110] for r in body if r.get("error")})
            line += f", {ok} captioned" + "".join(f"\n      {e}" for e in errors)
        elif body:
            line += f": {str(body)[:160]}"
        print(line)


def calibrate() -> None:
    """decode_cost's estimate against the peak RSS of decoding each kind in a fresh process."""
    from PIL import Image

    kinds = {
        "PNG grey 8000x6000": bombs.png_zeros(8000, 6000),
        "PNG RGB 6000x4000": bombs.png_zeros(6000, 4000, colour=2),
        "PNG RGBA 7000x7000": bombs.rgba_png_bomb(7000),
        "PNG palette+tRNS 10950x10950": bombs.palette_png_bomb(10950),
        "WebP lossless 3900x3900": bombs.webp_lossless_bomb(3900, 3900),
        "WebP lossy 4000x3000": bombs.encoded(Image.new("RGB", (4000, 3000)), "WEBP"),
        "AVIF 4000x4000": bombs.avif(4000),
        "TIFF RGB 6000x4000": bombs.encoded(
            Image.new("RGB", (6000, 4000)), "TIFF", compression="tiff_deflate"
        ),
        "GIF 6000x4000": bombs.encoded(Image.new("P", (6000, 4000)), "GIF"),
        "BMP RLE8 1400x1400": bombs.bmp_rle8(1400, 1400),
        "JPEG 12000x9000": bombs.encoded(Image.new("RGB", (12000, 9000)), "JPEG"),
    }
    code = (
        "import io, re, sys\n"
        "from PIL import Image\n"
        "from captioner.vision import images, limits\n"
        "data = sys.stdin.buffer.read()\n"
        "im = Image.open(io.BytesIO(data)); im.draft('RGB', (448, 448))\n"
        "kept = max(images._kept(*im.size, 224), images._kept(im.height, im.width, 224))\n"
        "estimate = limits.decode_cost(im, kept) / 2**20\n"
        "hwm = lambda k: int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5'); before = hwm('VmRSS')\n"
        "images.open_image(io.BytesIO(data), 224)\n"
        "print(f'{estimate:.0f} {(hwm(\"VmHWM\") - before) / 1024:.0f}')\n"
    )
    env = {**os.environ, "CAPTIONER_MAX_DECODE_MB": "4000"}
    print(f"{'file':32} {'estimate MB':>12} {'measured MB':>12}")
    for label, data in kinds.items():
        out = subprocess.run(
            [sys.executable, "-c", code], input=data, capture_output=True, env=env, check=True
        )
        estimate, measured = out.stdout.decode().split()
        print(f"{label:32} {estimate:>12} {measured:>12}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calibrate", action="store_true", help="estimate vs measured, per format")
    args = p.parse_args()
    if args.calibrate:
        calibrate()
        return
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "JPEG", quality=90)
    state = Path(tempfile.mkdtemp(prefix="captioner-attack-"))
    proc, url = start_server(state)
    try:
        report(attack(url, proc.pid, buf.getvalue()))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
