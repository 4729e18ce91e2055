"""Feature cache: encode each image once, store pooled features in a memory-mapped .npy.

The cache key hashes the encoder (name, weights, input size, preprocessing version) and every
image's path, size and modification time, so changing any of them can never reuse stale
features. Extraction writes chunks into a ``.partial.npy`` and records progress beside it, so an
interrupted run resumes where it stopped; the finished file appears by atomic rename.

Several processes may ask for the same features at once (two training jobs on one new
dataset): one writer holds an exclusive lock (flock on ``<key>.lock``) while it extracts; the
others wait, then read the finished file. The kernel drops the lock when its holder dies, so a
waiter then resumes the dead writer's partial file. (Without fcntl, on Windows, extraction is
not locked.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.atomic import write_json
from ..core.errors import ImageError
from ..core.paths import default_cache_dir
from ..core.progress import Event, Reporter, silent
from .encoders import Encoder
from .images import open_image, to_pixels
from .registry import get_spec

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# Bump when decoding, resize/crop or normalisation changes (2: EXIF orientation, 16-bit, alpha).
PREPROCESS_VERSION = 2


def cache_key(encoder: str, images: list[Path], weights_id: str | None = None) -> str:
    spec = get_spec(encoder)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [spec.name, weights_id or spec.weights_id, spec.image_size, PREPROCESS_VERSION]
        ).encode()
    )
    for p in images:
        st = Path(p).stat()
        h.update(f"\n{Path(p).resolve()}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


class _Images(Dataset):
    # Holds only the size (not the encoder) so worker processes stay cheap to start.
    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return to_pixels(open_image(self.paths[i], self.size), self.size)  # ImageError names it


def without_worker_traces(loader: Iterable) -> Iterator:
    """Iterate a DataLoader, re-raising a worker's ImageError with the message a user should
    read (PyTorch puts the worker's whole traceback into the message)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ImageError as exc:
            last = str(exc).strip().splitlines()[-1]
            raise ImageError(last.split("ImageError: ", 1)[-1]) from None
        yield batch


@contextlib.contextmanager
def _exclusive(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing and never deleted: a waiter may
    hold it open); `on_wait` is called once if another process holds it first."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _cached(final: Path, name: str, report: Reporter) -> np.ndarray:
    cached = np.load(final, mmap_mode="r")
    report(Event("features", len(cached), len(cached), message=f"features ({name}, cached)"))
    return cached


def stack_pixels(batch: list[np.ndarray]) -> torch.Tensor:
    """DataLoader collate function: uint8 HWC arrays -> one (N, H, W, 3) tensor."""
    return torch.from_numpy(np.stack(batch))


def extract_features(
    images: list[Path],
    encoder: str | Encoder,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    workers: int = 1,
    device: str = "cpu",
    report: Reporter = silent,
    grid: bool = False,
    label: str = "",
) -> np.ndarray:
    """Return a read-only float16 memmap of features, computing what is missing: pooled
    (N, D), or with grid=True (or a grid Encoder) the feature maps (N, regions, D) that
    attention decoders read. Reports ``features`` events (images done / total; metrics
    ``images_per_s`` and ``eta_s`` once a batch is done, ``stage`` while the encoder loads);
    `label` says which images (e.g. "train images") in the events' message."""
    name = encoder if isinstance(encoder, str) else encoder.spec.name
    title = f"{name}, {label}" if label else name
    grid = encoder.grid if isinstance(encoder, Encoder) else grid
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(name, images, None if isinstance(encoder, str) else encoder.weights_id)
    if grid:
        key = f"grid-{key}"
    final = cache_dir / f"{name}-{key}.npy"
    if final.exists():
        return _cached(final, title, report)

    def waiting() -> None:
        message = f"features ({title}): waiting for another process extracting the same images"
        report(Event("features", 0, len(images), message=message))

    with _exclusive(final.with_suffix(".lock"), waiting):
        if final.exists():  # another process extracted them while this one waited
            return _cached(final, title, report)
        _extract(images, encoder, name, grid, device, final, batch_size, workers, report, title)
    return np.load(final, mmap_mode="r")


def _extract(
    images: list[Path],
    encoder: str | Encoder,
    name: str,
    grid: bool,
    device: str,
    final: Path,
    batch_size: int,
    workers: int,
    report: Reporter,
    title: str = "",
) -> None:
    """Fill (or resume) the partial file, then rename it to `final`; the caller holds the lock."""
    partial = final.with_name(f"{final.stem}.partial.npy")
    state = final.with_name(f"{final.stem}.partial.json")
    done, out = 0, None  # a new file is shaped by the first batch (grids vary by encoder)
    if partial.exists() and state.exists():
        done = int(json.loads(state.read_text())["done"])
        out = np.lib.format.open_memmap(partial, mode="r+")
    label = f"features ({title or name})"
    # Loading the encoder (and exporting it to ONNX on first use) takes seconds: say so.
    report(Event("features", done, len(images), {"stage": "loading the encoder"}, label))
    enc = encoder if isinstance(encoder, Encoder) else Encoder(name, device, grid=grid)
    todo = _Images(images[done:], enc.spec.image_size)
    loader = DataLoader(todo, batch_size=batch_size, num_workers=workers, collate_fn=stack_pixels)
    report(Event("features", done, len(images), {"stage": "encoding images"}, label))
    start, t0 = done, time.monotonic()
    for batch in without_worker_traces(loader):
        feats = enc(batch).cpu().numpy().astype(np.float16)
        if out is None:
            out = np.lib.format.open_memmap(
                partial, mode="w+", dtype=np.float16, shape=(len(images), *feats.shape[1:])
            )
        out[done : done + len(feats)] = feats
        done += len(feats)
        out.flush()
        write_json(state, {"done": done}, indent=None)
        rate = (done - start) / max(time.monotonic() - t0, 1e-6)
        speed = {"images_per_s": round(rate, 2), "eta_s": round((len(images) - done) / rate)}
        report(Event("features", done, len(images), {"stage": "encoding images", **speed}, label))
    if out is None:  # no images at all
        dims = (0, enc.spec.feature_dim) if grid else (enc.spec.feature_dim,)
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(0, *dims))
    del out
    os.replace(partial, final)
    state.unlink(missing_ok=True)
