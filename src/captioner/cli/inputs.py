"""The images `captioner caption` is given: files, and folders searched recursively."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def find_images(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (recursively, by image suffix); returns (images, problems):
    one line for each path or folder that cannot be read, so the rest can still be captioned."""
    found: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        try:
            if p.is_dir():
                found.extend(sorted(_images_under(p, problems), key=natural_key))
            elif p.is_file():
                found.append(p)
            else:
                problems.append(f"{p}: no such file or folder")
        except OSError as exc:  # e.g. inside a folder we may not enter, or a name too long
            problems.append(_unreadable(p, exc))
    return found, problems


def _images_under(folder: Path, problems: list[str]) -> Iterator[Path]:
    """Image files in `folder` and below (links to folders are not followed); each folder or
    file that cannot be read adds a line to `problems` instead of vanishing silently."""

    def cannot_list(exc: OSError) -> None:
        problems.append(
            f"{exc.filename}: cannot list this folder ({exc.strerror}); its images were "
            "skipped: allow reading it (chmod a+rx) or leave it out"
        )

    for top, _dirs, files in os.walk(folder, onerror=cannot_list):
        for name in files:
            f = Path(top, name)
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                if f.is_file():  # follows a link; a broken one is skipped, as before
                    yield f
            except OSError as exc:
                problems.append(_unreadable(f, exc))


def is_folder(path: Path) -> bool:
    """Path.is_dir, with False where the path cannot be looked at (find_images said why)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _unreadable(path: Path, exc: OSError) -> str:
    return (
        f"{path}: cannot look at it ({exc.strerror}); check the name and that its folders "
        "may be read"
    )


def natural_key(path: Path) -> tuple[list, str]:
    """Sort key in which numbers compare as numbers: image2.jpg comes before image10.jpg."""
    text = path.as_posix()
    parts = re.split(r"(\d+)", text.lower())  # str, int, str, int, ... in the same places
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], text
