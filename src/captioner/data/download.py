"""`captioner download coco`: fetch the official COCO-2017 archives into the layout the readers
expect (DIR/images/{train,val}2017, DIR/annotations).

Downloads resume with HTTP Range, are checked against known sizes and MD5s, are extracted
safely (no absolute paths, no '..', no links), and are recorded as done, so a second run does
nothing. The disk space needed is computed and checked before anything is fetched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..core.errors import DownloadError

OFFICIAL_BASE = "http://images.cocodataset.org"


@dataclass(frozen=True)
class Archive:
    path: str  # below the base URL
    md5: str
    size: int  # bytes, used when the server does not say
    extract_to: str  # folder below DEST that the archive's top-level folder goes into
    expands: float  # extracted size / archive size, for the disk check


# The official archives (one table: --checksums replaces the MD5s for mirrors and tests).
ARCHIVES = {
    "train2017.zip": Archive(
        "zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", 19_336_861_798, "images", 1.0
    ),
    "val2017.zip": Archive(
        "zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", 815_585_330, "images", 1.0
    ),
    "annotations_trainval2017.zip": Archive(
        "annotations/annotations_trainval2017.zip",
        "f4bbac642086de4f52a3fdda2de5fa2c",
        252_907_541,
        ".",
        3.5,
    ),
}


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _remote_size(url: str) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as r:
            length = r.headers.get("Content-Length")
            return int(length) if length else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _fetch(url: str, part: Path, size: int | None, progress: bool) -> None:
    """Download url into part, continuing from part's current length when possible."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        return
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # nothing left to fetch
            return
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(
            f"cannot reach {url} ({exc}); check the connection or use "
            "--base-url for a mirror. Run again to resume."
        ) from None
    with resp:
        if have and resp.status != 206:  # server ignored Range: start over
            have = 0
        mode = "ab" if have else "wb"
        total = (
            size
            if size is not None
            else (have + int(resp.headers.get("Content-Length", 0)) or None)
        )
        with (
            part.open(mode) as fh,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            try:
                while chunk := resp.read(1 << 20):
                    fh.write(chunk)
                    bar.update(len(chunk))
            except (OSError, urllib.error.URLError) as exc:
                raise DownloadError(
                    f"download of {url} broke off ({exc}); run the same command again to resume"
                ) from None


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip, refusing absolute paths, '..' components and symbolic links."""
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
                raise DownloadError(f"{archive.name}: refusing unsafe entry {name!r}")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DownloadError(f"{archive.name}: refusing symbolic link {name!r}")
        tmp = dest / f".extract-{archive.stem}"
        shutil.rmtree(tmp, ignore_errors=True)
        z.extractall(tmp)
    dest.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        target = dest / item.name
        if target.exists():
            if target.is_dir() and item.is_dir():  # merge, e.g. a second split into images/
                for sub in item.iterdir():
                    if (target / sub.name).exists():
                        if (target / sub.name).is_dir():
                            shutil.rmtree(target / sub.name)
                        else:
                            (target / sub.name).unlink()
                    sub.rename(target / sub.name)
                continue
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        item.rename(target)
    shutil.rmtree(tmp, ignore_errors=True)


def download_coco(
    dest: Path,
    splits: tuple[str, ...] = ("train", "val"),
    with_images: bool = True,
    base_url: str | None = None,
    checksums: Path | None = None,
    progress: bool = True,
    keep_archives: bool = False,
) -> list[str]:
    """Fetch, verify and extract what is missing; returns the archives that were processed."""
    dest = Path(dest)
    for split in splits:
        if split not in ("train", "val"):
            raise DownloadError(f"unknown split {split!r}; COCO-2017 captions have train, val")
    names = ["annotations_trainval2017.zip"]
    if with_images:
        names += [f"{s}2017.zip" for s in splits]
    md5s = {n: a.md5 for n, a in ARCHIVES.items()}
    if checksums:
        try:
            md5s.update(json.loads(Path(checksums).read_text()))
        except (OSError, ValueError) as exc:
            raise DownloadError(f"--checksums {checksums}: {exc}") from None
    base = (base_url or OFFICIAL_BASE).rstrip("/")
    work = dest / ".download"
    todo = [n for n in names if not (work / f"{n}.done").exists()]
    if not todo:
        if progress:
            print(f"COCO-2017 ({', '.join(names)}) is already in {dest}; nothing to do")
        return []

    # Disk check before any byte is fetched: what is left to download plus what it expands to.
    work.mkdir(parents=True, exist_ok=True)
    sizes = {n: _remote_size(f"{base}/{ARCHIVES[n].path}") or ARCHIVES[n].size for n in todo}
    need = sum(
        sizes[n] - (work / f"{n}.part").stat().st_size
        if (work / f"{n}.part").exists()
        else sizes[n]
        for n in todo
    )
    need += sum(int(sizes[n] * ARCHIVES[n].expands) for n in todo)
    free = shutil.disk_usage(dest).free
    if progress:
        print(f"needs about {_human(need)} free in {dest} ({_human(free)} free)")
    if need > free:
        raise DownloadError(
            f"not enough disk space in {dest}: needs about {_human(need)}, "
            f"{_human(free)} free. Free some space or choose another --dest."
        )

    for n in todo:
        arch, part = ARCHIVES[n], work / f"{n}.part"
        _fetch(f"{base}/{arch.path}", part, sizes[n], progress)
        got = part.stat().st_size
        if got != sizes[n]:
            raise DownloadError(f"{n}: got {got} bytes, expected {sizes[n]}; run again to resume")
        digest = _md5(part)
        if digest != md5s[n]:
            part.unlink()
            raise DownloadError(
                f"{n}: checksum mismatch (MD5 {digest}, expected {md5s[n]}); "
                "the corrupt file was deleted, run again to download it anew"
            )
        if progress:
            print(f"{n}: checksum OK, extracting")
        try:
            safe_extract(part, dest / arch.extract_to)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{n}: not a valid zip ({exc})") from None
        if keep_archives:
            part.rename(work / n)
        else:
            part.unlink()
        (work / f"{n}.done").write_text(json.dumps({"md5": digest, "bytes": got}))
    return todo
