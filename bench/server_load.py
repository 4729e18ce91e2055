"""Web API figures (issue 3): a 20-image upload, 16 concurrent clients, resident memory.

    python bench/server_load.py [--images ../shared/data/flickr8k] [--seconds 30]

Starts `captioner serve` on a free loopback port with the bundled model, then:
1. POST /api/captions with 20 dev photos, 5 times: median seconds per request (target <= 1.5 s);
2. 16 client threads each posting single photos for --seconds: errors, throughput, p50/p95;
3. the server's resident memory (VmRSS) after start-up and after the load (target <= 600 MB).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=Path, default=Path("../shared/data/flickr8k"))
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--clients", type=int, default=16)
    args = p.parse_args()
    names = (args.images / "Flickr_8k.devImages.txt").read_text().split()[:100]
    photos = [(n, (args.images / "images" / n).read_bytes()) for n in names]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tempfile.mkdtemp()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "captioner",
            "serve",
            "--port",
            str(port),
            "--disable-training",
            "--state-dir",
            state,
        ]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        httpx.post(base + "/api/captions", files=[("files", photos[0])], timeout=60)  # warm-up
        print(f"server RSS after start-up and one caption: {rss_mb(server.pid):.0f} MB")

        batch = [("files", ph) for ph in photos[:20]]
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = httpx.post(base + "/api/captions", files=batch, timeout=60)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200 and all(x["caption"] for x in r.json()), r.text
        print(
            f"20-image upload: median {statistics.median(times):.2f} s "
            f"(runs: {', '.join(f'{t:.2f}' for t in times)})"
        )

        latencies: list[float] = []
        errors: list[str] = []
        stop = time.perf_counter() + args.seconds

        def client(i: int) -> None:
            with httpx.Client(timeout=60) as c:
                k = i
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    try:
                        r = c.post(
                            base + "/api/captions", files=[("files", photos[k % len(photos)])]
                        )
                        if r.status_code != 200 or not r.json()[0]["caption"]:
                            errors.append(f"{r.status_code} {r.text[:100]}")
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                    latencies.append(time.perf_counter() - t0)
                    k += args.clients

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        lat = sorted(latencies)
        print(
            f"{args.clients} clients for {wall:.0f} s: {len(lat)} requests, {len(errors)} errors,"
            f" {len(lat) / wall:.1f} images/s, p50 {lat[len(lat) // 2]:.2f} s, "
            f"p95 {lat[int(len(lat) * 0.95)]:.2f} s"
        )
        for e in errors[:5]:
            print("  error:", e)
        print(f"server RSS after the load: {rss_mb(server.pid):.0f} MB")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
