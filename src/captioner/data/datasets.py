"""Dataset readers. Every format yields the same thing: a list of `Record(image, captions)`.

Formats:
- ``coco``: ``annotations/captions_{split}2017.json`` with images in ``{split}2017/`` or
  ``images/{split}2017/`` (the cocoapi layout). Splits ``train``, ``val``, and ``dev``/``test``:
  a fixed half/half split of val2017 by a hash of the image id, for comparable results without
  the Karpathy file.
- ``karpathy``: ``dataset_coco.json`` (Karpathy & Fei-Fei's 113k/5k/5k split used by most
  papers) beside COCO-2017 (or 2014) images; splits ``train`` (train + restval), ``val``, ``test``.
- ``flickr8k``: ``Flickr8k.token.txt`` + ``Flickr_8k.{train,dev,test}Images.txt`` + ``images/``
  (or ``Flicker8k_Dataset/``).
- ``captions``: a CSV or JSONL file with ``image,caption`` (optional ``split``) and an image
  folder (default: the file's folder). Without a ``split`` column, a fixed 5% of images (by a
  hash of the file name) form ``dev``, the rest ``train``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import CaptionerError, DataPathError, DatasetError

log = logging.getLogger(__name__)

FORMATS = ("coco", "karpathy", "flickr8k", "captions")


@dataclass(frozen=True)
class Record:
    image: Path
    captions: tuple[str, ...]


def _group(pairs: list[tuple[Path, str]]) -> list[Record]:
    grouped: OrderedDict[Path, list[str]] = OrderedDict()
    for image, caption in pairs:
        grouped.setdefault(image, []).append(caption)
    return [Record(image, tuple(caps)) for image, caps in grouped.items()]


# Maps an image path named in a dataset file to the path to read, or raises a CaptionerError
# when it may not be read (the server's data roots: serving.datapaths.confine).
ConfineImage = Callable[[Path], Path]


def _confined(records: list[Record], source: Path, confine_image: ConfineImage) -> list[Record]:
    """Each record's image through `confine_image`, before any is looked up: an error must
    never tell which paths outside the allowed folders exist, nor quote the file."""
    kept, outside = [], 0
    for r in records:
        try:
            kept.append(Record(confine_image(r.image), r.captions))
        except CaptionerError:
            outside += 1
    if outside:
        raise DataPathError(
            f"{source}: {outside} of {len(records)} image paths in it are not paths inside the "
            "data folders this server may read; a dataset file may only name images inside "
            "them (relative to its image folder, without '..' leaving it)"
        )
    return kept


def _is_file(path: Path) -> bool:
    """Path.is_file, False where the path cannot even be looked at (a name over 255 bytes)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _allowed(image: Path, confine_image: ConfineImage | None) -> bool:
    """Whether `image` may be looked at (before asking whether it exists)."""
    if confine_image is None:
        return True
    try:
        confine_image(image)
    except CaptionerError:
        return False
    return True


def _check_images(
    records: list[Record],
    source: Path,
    skip_missing: bool,
    confine_image: ConfineImage | None = None,
) -> list[Record]:
    if confine_image is not None:
        records = _confined(records, source, confine_image)
    missing = [r for r in records if not _is_file(r.image)]
    if not missing:
        return records
    if skip_missing:
        log.warning(
            "%s: skipped %d of %d images that do not exist (first: %s)",
            source,
            len(missing),
            len(records),
            missing[0].image,
        )
        return [r for r in records if _is_file(r.image)]
    shown = ", ".join(str(r.image) for r in missing[:3])
    raise DatasetError(
        f"{source}: {len(missing)} of {len(records)} images do not exist (e.g. {shown}). "
        "Check the image folder, or pass --skip-missing to train without them."
    )


def _half(image_id: int) -> str:
    return "dev" if int(hashlib.sha1(str(image_id).encode()).hexdigest(), 16) % 2 == 0 else "test"


def read_coco(
    root: Path,
    split: str = "train",
    skip_missing: bool = False,
    confine_image: ConfineImage | None = None,
) -> list[Record]:
    root = Path(root)
    if split in ("dev", "test"):  # the documented deterministic halves of val2017
        half = split
        records = read_coco(root, "val", skip_missing, confine_image)
        return [r for r in records if _half(int(Path(r.image).stem)) == half]
    ann = root / "annotations" / f"captions_{split}2017.json"
    if not ann.is_file():
        raise DatasetError(
            f"{ann} not found: expected the COCO-2017 layout "
            f"(annotations/captions_{split}2017.json) under {root}"
        )
    image_dir = next(
        (d for d in (root / f"{split}2017", root / "images" / f"{split}2017") if d.is_dir()), None
    )
    if image_dir is None:
        raise DatasetError(
            f"no image folder for split {split!r}: expected {root}/{split}2017 "
            f"or {root}/images/{split}2017"
        )
    try:
        data = json.loads(ann.read_text(encoding="utf-8"))
        files = {img["id"]: img["file_name"] for img in data["images"]}
        pairs = [
            (image_dir / files[a["image_id"]], str(a["caption"]).strip())
            for a in data["annotations"]
        ]
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{ann}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except (KeyError, TypeError) as exc:
        raise DatasetError(
            f"{ann}: not a COCO captions file (missing or bad field {exc}); "
            "expected 'images' with id/file_name and 'annotations' with "
            "image_id/caption"
        ) from None
    pairs.sort(key=lambda p: p[0].name)  # stable order regardless of annotation order
    return _check_images(_group(pairs), ann, skip_missing, confine_image)


def read_flickr8k(
    root: Path,
    split: str = "train",
    skip_missing: bool = False,
    confine_image: ConfineImage | None = None,
) -> list[Record]:
    root = Path(root)
    token_file = root / "Flickr8k.token.txt"
    split_file = root / f"Flickr_8k.{split}Images.txt"
    for f in (token_file, split_file):
        if not f.is_file():
            raise DatasetError(
                f"{f} not found: is {root} a Flickr8k folder and is {split!r} "
                "one of train, dev, test?"
            )
    image_dir = next(
        (d for d in (root / "images", root / "Flicker8k_Dataset", root / "Images") if d.is_dir()),
        root / "images",
    )
    wanted = {
        ln.strip() for ln in split_file.read_text(encoding="utf-8").splitlines() if ln.strip()
    }
    pairs: list[tuple[Path, str]] = []
    skipped = 0
    for lineno, line in enumerate(token_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        name, hash_, idx = key.partition("#")
        # The original token file has a few keys like "x.jpg.1#0" for images that don't exist.
        if not sep or not hash_ or not idx.isdigit() or not name.endswith(".jpg"):
            skipped += 1
            log.debug("%s:%d: skipped malformed key %r", token_file, lineno, key)
            continue
        if name in wanted and caption.strip():
            pairs.append((image_dir / name, caption.strip()))
    if skipped:
        log.info("%s: skipped %d lines with malformed keys", token_file, skipped)
    if not pairs:
        raise DatasetError(f"{token_file}: no captions for the images in {split_file}")
    pairs.sort(key=lambda p: p[0].name)
    return _check_images(_group(pairs), token_file, skip_missing, confine_image)


def read_karpathy(
    root: Path,
    split: str = "train",
    skip_missing: bool = False,
    confine_image: ConfineImage | None = None,
) -> list[Record]:
    """Karpathy's dataset_coco.json. Images are looked up under their 2014 path first
    (filepath/filename), then by COCO id in the 2017 folders, so either download works."""
    root = Path(root)
    path = root / "dataset_coco.json" if root.is_dir() else root
    root = path.parent
    if not path.is_file():
        raise DatasetError(
            f"{path} not found: put Karpathy's dataset_coco.json in the COCO "
            "folder (or pass its path)"
        )
    if split not in ("train", "val", "test"):
        raise DatasetError(f"Karpathy splits are train, val and test, not {split!r}")
    wanted = {"train", "restval"} if split == "train" else {split}
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
        folders = [
            d
            for d in (
                root / "images" / "train2017",
                root / "images" / "val2017",
                root / "train2017",
                root / "val2017",
            )
            if d.is_dir()
        ]
        records = []
        for img in images:
            if img["split"] not in wanted:
                continue
            old = root / img.get("filepath", "") / img["filename"]
            image = (
                old
                if _allowed(old, confine_image) and _is_file(old)
                else next(
                    (
                        d / f"{int(img['cocoid']):012d}.jpg"
                        for d in folders
                        if (d / f"{int(img['cocoid']):012d}.jpg").is_file()
                    ),
                    old,
                )
            )
            caps = tuple(str(s["raw"]).strip() for s in img["sentences"])
            records.append(Record(image, caps))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{path}: not a Karpathy split file (bad or missing field {exc})"
        ) from None
    records.sort(key=lambda r: r.image.name)
    return _check_images(records, path, skip_missing, confine_image)


def _hash_split(name: str) -> str:
    return "dev" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 20 == 0 else "train"


def read_captions_file(
    path: Path,
    split: str | None = None,
    images: Path | None = None,
    skip_missing: bool = False,
    confine_image: ConfineImage | None = None,
) -> list[Record]:
    """Errors name the file and line but never quote it: a server job's error is shown to a
    web user, and the file may be anything (a link to /etc/passwd named .csv)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found")
    image_dir = Path(images) if images else path.parent
    try:
        rows = _caption_rows(path)
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    pairs = []
    for lineno, row in rows:
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image.strip():
            raise DatasetError(f"{path}:{lineno}: missing 'image'")
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetError(f"{path}:{lineno}: missing or empty 'caption'")
        row_split = row.get("split") or _hash_split(image.strip())
        if split is None or row_split == split:
            pairs.append((image_dir / image.strip(), caption.strip()))
    if not pairs:
        raise DatasetError(f"{path}: no captions" + (f" in split {split!r}" if split else ""))
    return _check_images(_group(pairs), path, skip_missing, confine_image)


def _caption_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for each row of a captions CSV or JSONL file."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            try:
                if not {"image", "caption"} <= set(reader.fieldnames or []):
                    raise DatasetError(
                        f"{path}:1: expected a header row with columns image,caption (and "
                        "optionally split)"
                    )
                return [(reader.line_num, row) for row in reader]
            except csv.Error:  # e.g. a field over csv's size limit: not a captions file
                raise DatasetError(
                    f"{path}:{reader.reader.line_num}: not a CSV row; expected columns "
                    "image,caption"
                ) from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{i}: expected an object with image and caption")
            rows.append((i, row))
        return rows
    raise DatasetError(
        f"{path}: unsupported captions file type {path.suffix!r}; "
        "use .csv or .jsonl with image,caption columns"
    )


def load_dataset(
    fmt: str,
    path: Path | str,
    split: str = "train",
    images: Path | None = None,
    skip_missing: bool = False,
    confine_image: ConfineImage | None = None,
) -> list[Record]:
    """Read a dataset split in any supported format. `confine_image` (None: any path) maps
    each image path the dataset names to the path to read, or refuses it with a
    CaptionerError; the server confines every image to its data roots this way."""
    kw = {"skip_missing": skip_missing, "confine_image": confine_image}
    readers = {"coco": read_coco, "karpathy": read_karpathy, "flickr8k": read_flickr8k}
    if fmt not in (*readers, "captions"):
        raise DatasetError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        if fmt == "captions":
            return read_captions_file(Path(path), split, images, **kw)
        return readers[fmt](Path(path), split, **kw)
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: a file of this {fmt} dataset is not UTF-8 text") from None
