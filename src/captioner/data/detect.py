"""Find datasets in a folder tree and say what they are, cheaply: which format (the files each
reader in `datasets` needs), how many images and captions, which splits. Used by the web app's
dataset picker (`GET /api/datasets`), so it must stay fast on a big data folder:

- only a few levels are looked at (a dataset is a folder or a captions file near the top);
- a folder is listed up to `MAX_ENTRIES` entries (an image folder of 100k photos is not read);
- counts come from the annotation files alone, never from opening images: JSON files are
  counted by their keys (``"caption":``) in a streamed byte scan instead of being parsed, and a
  text file larger than `MAX_TEXT_BYTES` is counted by lines only.

Counts are what the annotation files list (a missing image is still counted).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAX_ENTRIES = 2000  # entries read from one folder
MAX_TEXT_BYTES = 64 * 1024 * 1024  # larger captions/token files: lines are counted, not parsed
CAPTION_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_SKIP = {"images", "Images", "Flicker8k_Dataset", "train2017", "val2017", "test2017", "__pycache__"}


@dataclass
class Found:
    format: str  # one of datasets.FORMATS: coco, karpathy, flickr8k, captions
    path: Path  # the dataset_path a training run is given
    images: int | None = None
    captions: int | None = None
    splits: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self) | {"path": str(self.path)}


def _entries(folder: Path) -> list[os.DirEntry]:
    out = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                out.append(entry)
                if len(out) >= MAX_ENTRIES:
                    break
    except OSError:
        return []
    return sorted(out, key=lambda e: e.name)


def _count_keys(path: Path, *keys: bytes, chunk: int = 1 << 22) -> list[int]:
    """How often each key occurs in a file, streamed (a key never spans more than its length
    across a chunk boundary, so an overlap of the longest key's length is carried over)."""
    counts = [0] * len(keys)
    keep = max(len(k) for k in keys) - 1
    tail = b""
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                data = tail + block
                for i, k in enumerate(keys):
                    # Occurrences entirely inside the carried-over tail were counted already.
                    counts[i] += data.count(k) - tail.count(k)
                tail = data[-keep:] if keep else b""
    except OSError:
        return [0] * len(keys)
    return counts


def _flickr8k(folder: Path, names: set[str]) -> Found | None:
    if "Flickr8k.token.txt" not in names:
        return None
    token = folder / "Flickr8k.token.txt"
    splits = [s for s in ("train", "dev", "test") if f"Flickr_8k.{s}Images.txt" in names]
    found = Found("flickr8k", folder, splits=splits)
    try:
        if token.stat().st_size > MAX_TEXT_BYTES:
            with open(token, "rb") as fh:
                found.captions = sum(1 for line in fh if line.strip())
            return found
        images, captions = set(), 0
        for line in token.read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, caption = line.partition("\t")
            name, _, idx = key.partition("#")
            if sep and idx.isdigit() and name.endswith(".jpg") and caption.strip():
                images.add(name)
                captions += 1
        found.images, found.captions = len(images), captions
    except OSError:
        pass
    return found


def _coco(folder: Path, names: set[str]) -> Found | None:
    if "annotations" not in names:
        return None
    splits = [
        s for s in ("train", "val") if (folder / "annotations" / f"captions_{s}2017.json").is_file()
    ]
    if not splits:
        return None
    found = Found("coco", folder, 0, 0, splits + (["dev", "test"] if "val" in splits else []))
    for s in splits:
        images, captions = _count_keys(
            folder / "annotations" / f"captions_{s}2017.json", b'"file_name"', b'"caption"'
        )
        found.images += images
        found.captions += captions
    return found


def _karpathy(folder: Path, names: set[str]) -> Found | None:
    if "dataset_coco.json" not in names:
        return None
    images, captions = _count_keys(folder / "dataset_coco.json", b'"filename"', b'"raw"')
    return Found("karpathy", folder, images, captions, ["train", "val", "test"])


def _captions_file(path: Path) -> Found | None:
    """A CSV with image and caption columns, or JSONL objects with image and caption."""
    try:
        size = path.stat().st_size
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            head = fh.readline()
            if path.suffix.lower() == ".csv":
                columns = {c.strip() for c in next(csv.reader([head]), [])}
                if not {"image", "caption"} <= columns:
                    return None
            else:
                row = json.loads(head)
                if not isinstance(row, dict) or not {"image", "caption"} <= set(row):
                    return None
            found = Found("captions", path)
            if size > MAX_TEXT_BYTES:  # big: lines only
                found.captions = sum(1 for line in fh if line.strip())
                return found
            text = head + fh.read()
    except (OSError, ValueError):
        return None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    rows = [r for r in rows if r.get("image") and r.get("caption")]
    found.images = len({r["image"] for r in rows})
    found.captions = len(rows)
    found.splits = sorted({str(r["split"]) for r in rows if r.get("split")}) or ["train", "dev"]
    return found


def detect(path: Path) -> list[Found]:
    """The datasets `path` holds itself (a folder may be both COCO and Karpathy)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in CAPTION_SUFFIXES:
            found = _captions_file(path)
            return [found] if found else []
        return []
    names = {e.name for e in _entries(path)}
    return [f for f in (_flickr8k(path, names), _coco(path, names), _karpathy(path, names)) if f]


def find_datasets(root: Path, depth: int = 2) -> list[Found]:
    """Datasets in `root` down to `depth` levels (root/x, root/x/y); a folder that is a dataset
    is not searched further (its images are not datasets). Links are followed (operators link
    datasets kept elsewhere into a data folder)."""
    found: list[Found] = []

    def walk(folder: Path, level: int) -> None:
        for entry in _entries(folder):
            if entry.name.startswith(".") or entry.name in _SKIP:
                continue
            child = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            here = detect(child) if is_dir or child.suffix.lower() in CAPTION_SUFFIXES else []
            found.extend(here)
            if is_dir and not here and level < depth:
                walk(child, level + 1)

    walk(Path(root), 1)
    return found
