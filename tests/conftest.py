"""Shared fixtures: real photos from scikit-image, and ../shared data when present."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAPTIONER_SHARED", ROOT.parent / "shared")) / "data"
FLICKR = SHARED / "flickr8k"
COCO = SHARED / "coco-mini"

needs_flickr = pytest.mark.skipif(
    not (FLICKR / "Flickr8k.token.txt").is_file(),
    reason=f"Flickr8k not found at {FLICKR} (../shared is absent)",
)
needs_coco = pytest.mark.skipif(
    not (COCO / "annotations").is_dir(),
    reason=f"COCO slice not found at {COCO} (../shared is absent)",
)

# Real photographs bundled with scikit-image, with captions written by hand for them.
PHOTOS = {
    "astronaut": "a woman in an orange space suit smiles in front of a flag",
    "coffee": "a cup of coffee on a saucer with a spoon",
    "chelsea": "a ginger cat looks to the side",
    "rocket": "a rocket stands on the launch pad under a blue sky",
}

# A tiny decoder trained on the photos above in seconds (training tests).
TINY = dict(
    dataset_format="captions",
    vocab_threshold=1,
    embed_size=48,
    hidden_size=96,
    dropout=0.0,
    label_smoothing=0.0,
    batch_size=4,
    beam_size=2,
    device="cpu",
)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skimage.data

    d = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(d / f"{name}.jpg", quality=92)
    return d


@pytest.fixture(scope="session")
def captions_csv(photo_dir: Path) -> Path:
    """Every photo in both train and dev, so a model can be trained and scored on it."""
    path = photo_dir / "captions.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption", "split"])
        for split in ("train", "dev"):
            for name, caption in PHOTOS.items():
                w.writerow([f"{name}.jpg", caption, split])
    return path


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # One cache per test session, never the user's ~/.cache.
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@contextlib.contextmanager
def serve_in_thread(app):
    """Run an ASGI app with Uvicorn on a free loopback port in a thread; yields the port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# How each EXIF orientation stores an upright photo (the inverse of what undoes it).
EXIF_STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def wait_until_serving(url: str, proc, seconds: float = 120) -> None:
    """Until a `captioner serve` subprocess answers /healthz; fails with its stderr if it dies
    or does not answer in time."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.stderr.read()}")
        time.sleep(0.3)
