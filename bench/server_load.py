"""Web API figures (issue 3): a 20-image upload, 16 concurrent clients, resident memory.

    python bench/server_load.py [--images ../shared/data/flickr8k] [--seconds 30]
    python bench/server_load.py --clients 32 --seconds 60 --with-job   # issue 9's figure

Starts `captioner serve` on a free loopback port with the bundled model, then:
1. POST /api/captions with 20 dev photos, 5 times: median seconds per request (target <= 1.5 s);
2. 16 client threads each posting single photos for --seconds: errors, throughput, p50/p95;
3. the server's resident memory (VmRSS) after start-up and after the load (target <= 600 MB).
With --with-job, a training job (Flickr8k subset, linked into a data root) runs in the
background during step 2, and the job's state before and after the load is printed.
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


def link_subset(flickr: Path, state: Path, n: int = 1000) -> str:
    """A Flickr8k folder of n training photos (+100 dev) linked into a data root."""
    root = state / "data" / "flickr"
    (root / "images").mkdir(parents=True)
    train = (flickr / "Flickr_8k.trainImages.txt").read_text().split()[:n]
    dev = (flickr / "Flickr_8k.devImages.txt").read_text().split()[:100]
    for name in train + dev:
        (root / "images" / name).symlink_to((flickr / "images" / name).resolve())
    wanted = set(train + dev)
    lines = [
        x
        for x in (flickr / "Flickr8k.token.txt").read_text().splitlines()
        if x.split("#")[0] in wanted
    ]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(train) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(dev) + "\n")
    return str(state / "data")


def start_job(base: str) -> str:
    """Start training and wait until it is past feature extraction and taking steps."""
    job = httpx.post(
        f"{base}/api/jobs", json={"dataset_path": "flickr", "epochs": 50}, timeout=60
    ).json()["id"]
    for _ in range(1200):
        state = httpx.get(f"{base}/api/jobs/{job}").json()
        if state["state"] != "running" and state["state"] != "queued":
            raise RuntimeError(f"the job ended early: {state}")
        if state["progress"].get("step"):
            print(f"training job {job} is running: {state['progress']}")
            return job
        time.sleep(0.5)
    raise RuntimeError("the job did not start training within 10 minutes")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=Path, default=Path("../shared/data/flickr8k"))
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--with-job", action="store_true", help="train a model during the load")
    args = p.parse_args()
    names = (args.images / "Flickr_8k.devImages.txt").read_text().split()[:100]
    photos = [(n, (args.images / "images" / n).read_bytes()) for n in names]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tempfile.mkdtemp()
    mode = (
        ["--data-root", link_subset(args.images, Path(state))]
        if args.with_job
        else ["--disable-training"]
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "captioner",
            "serve",
            "--port",
            str(port),
            "--state-dir",
            state,
            *mode,
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

        job = start_job(base) if args.with_job else None
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
        if job:
            after = httpx.get(f"{base}/api/jobs/{job}").json()
            print(f"training job during the load: {after['state']}, progress {after['progress']}")
            httpx.post(f"{base}/api/jobs/{job}/stop", timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
