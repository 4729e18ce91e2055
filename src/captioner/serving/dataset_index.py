"""The datasets under the server's data roots, for the Train page's picker (`GET /api/datasets`).

Scanning is `data.detect.find_datasets` (bounded depth and folder size, counts from annotation
files only), run in a request thread, one scan at a time, and cached for `ttl_s` seconds so a
page that reloads never rescans a big data folder; `refresh=True` rescans now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..data.detect import find_datasets


class DatasetIndex:
    def __init__(self, roots: Sequence[Path], ttl_s: float = 30.0) -> None:
        self.roots = list(roots)
        self.ttl_s = ttl_s
        self.lock = threading.Lock()
        self.cached: tuple[float, list[dict]] | None = None

    def list(self, refresh: bool = False) -> list[dict]:
        with self.lock:  # concurrent requests wait for one scan, then share it
            now = time.monotonic()
            if refresh or self.cached is None or now - self.cached[0] > self.ttl_s:
                self.cached = (now, self._scan())
            return self.cached[1]

    def _scan(self) -> list[dict]:
        out, seen = [], set()
        for root in self.roots:
            for found in find_datasets(root):
                rel = found.path.relative_to(root)
                # A relative path is read in the first root where it exists (datapaths.confine):
                # the picker gives the absolute path when an earlier root has the same name.
                first = next((r for r in self.roots if (r / rel).exists()), root)
                item = found.as_dict() | {
                    "name": rel.as_posix(),
                    "path": rel.as_posix(),
                    "root": str(root),
                    "dataset_path": rel.as_posix() if first == root else str(found.path),
                    "linked": _linked(found.path, root),
                }
                key = (item["dataset_path"], item["format"])
                if key not in seen:
                    seen.add(key)
                    out.append(item)
        return out


def _linked(path: Path, root: Path) -> bool:
    """Whether `path` is reached through a link inside `root` (ln -s DATASET root/)."""
    return any(
        p.is_symlink() for p in [path, *path.parents] if p != root and p.is_relative_to(root)
    )
