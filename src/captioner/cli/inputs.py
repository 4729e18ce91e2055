"""The images `captioner caption` is given: files, and folders searched recursively."""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def find_images(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (recursively, by image suffix); returns (images, problems)."""
    found: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(
                sorted(
                    (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                    key=natural_key,
                )
            )
        elif p.is_file():
            found.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    return found, problems


def natural_key(path: Path) -> tuple[list, str]:
    """Sort key in which numbers compare as numbers: image2.jpg comes before image10.jpg."""
    text = path.as_posix()
    parts = re.split(r"(\d+)", text.lower())  # str, int, str, int, ... in the same places
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], text
