"""Paths a web user types are confined to the server's data roots (`serve --data-root`).

Every path field of the training settings (`dataset_path`, `images`, and any `Path` field added
later; only `cache_dir` is the server's own) goes through `confine`, and so does every image
path the dataset file names (`confine_dataset_images`):

- a relative path is read relative to a data root (the first root where it exists);
- the path is normalised lexically (``a/../b`` -> ``b``) and must then lie inside a root;
- symlinks are not resolved: a link the operator placed inside a root (``ln -s ~/datasets/
  flickr8k data/``) is followed when the files are read. Only the operator can place links
  there, so they are trusted; what the user types can never climb out with ``..``.
- the real location of such a link (``~/datasets/flickr8k`` for a link ``data/flickr8k``
  placed directly inside a root) names the same files, so an absolute path inside a link's
  target is accepted and rewritten to go through the link (``data/flickr8k/...``): it reaches
  nothing the link does not already expose.

The confined path is the normalised one, so the operating system never sees a ``..`` a user
typed (after a symlink, ``link/..`` would otherwise mean the parent of the link's target).
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from ..core.errors import ConfigError, DataPathError
from ..data.datasets import load_dataset

if typing.TYPE_CHECKING:
    from ..config import TrainConfig

__all__ = [
    "DataPathError",
    "absolute_roots",
    "confine",
    "confine_dataset_images",
    "confine_paths",
    "path_fields",
]
SERVER_PATHS = frozenset({"cache_dir"})  # set by the server, never by a user
# Longer names make every lookup fail with "File name too long": refused up front, in words.
NAME_MAX, PATH_MAX = 255, 4096  # bytes (Linux)


def _normal(path: str | os.PathLike) -> Path:
    """Absolute and lexically normalised; symlinks are left alone. A leading '//' is '/'
    (POSIX leaves its meaning open; Linux and macOS read it as '/')."""
    text = os.path.normpath(os.path.abspath(path))
    return Path("/" + text.lstrip("/") if text.startswith("//") else text)


def _inside(path: Path, base: Path) -> bool:
    return path == base or path.is_relative_to(base)


def _is_path_type(annotation: object) -> bool:
    if annotation is Path:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_path_type(a) for a in typing.get_args(annotation))
    return False


def path_fields(model: type[BaseModel]) -> list[str]:
    """The fields of `model` a user gives as paths (typed Path or Path | None)."""
    return [
        name
        for name, info in model.model_fields.items()
        if name not in SERVER_PATHS and _is_path_type(info.annotation)
    ]


def absolute_roots(roots: Sequence[str | os.PathLike]) -> list[Path]:
    """The data roots as absolute, normalised paths (a root that is a link stays a link)."""
    return [_normal(os.path.expanduser(r)) for r in roots]


def describe_roots(roots: Sequence[Path]) -> str:
    return ", ".join(map(str, absolute_roots(roots)))


def confine(value: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> Path:
    """The absolute, normalised path `value` names inside one of `roots`, or DataPathError."""
    if not roots:
        raise DataPathError(
            "this server allows no training data; start it with --data-root DIR "
            "(the folder that holds your datasets)"
        )
    text = os.fspath(value)
    if not text.strip() or "\0" in text:
        raise DataPathError(f"{text!r} is not a path; give a path inside {describe_roots(roots)}")
    if any(not part.strip() for part in Path(text).parts):
        # A folder or file named only by spaces is a typing slip ('flickr8k/ '), and would
        # come back from confinement as a path that is refused above.
        raise DataPathError(
            f"{text!r} has a part that is only spaces; remove them and give a path inside "
            f"{describe_roots(roots)}"
        )
    _check_length(text)
    lexical = absolute_roots(roots)
    # A root may itself be a link (data -> /mnt/data): its real location is the same folder.
    bases = lexical + [Path(os.path.realpath(r)) for r in lexical]
    given = Path(text)  # '~' is not expanded: a typed path is read relative to a root
    # An absolute path names one place; a relative one is tried under each root.
    candidates = [
        _normal(c) for c in ([given] if given.is_absolute() else [r / given for r in lexical])
    ]
    inside = [c for c in candidates if any(_inside(c, b) for b in bases)]
    if not inside and given.is_absolute():
        # The real location of a dataset the operator linked into a root (typed as the link's
        # target, e.g. ~/datasets/flickr8k for data/flickr8k): the same files, read through
        # the link, so the path becomes root/link/... and never leaves what the link exposes.
        inside = [p for p in [_through_link(candidates[0], lexical)] if p is not None]
    if not inside:
        example = lexical[0] / "flickr8k"
        rel = text.lstrip("/")  # '/flickr8k' typed for 'flickr8k'?
        near = [
            _normal(r / rel)
            for r in lexical
            if given.is_absolute() and rel and _inside(_normal(r / rel), r) and _exists(r / rel)
        ]
        hint = f" (did you mean '{rel}', i.e. {near[0]}?)" if near else ""
        raise DataPathError(
            f"{text} is not inside the data folders this server may read{hint} "
            f"({describe_roots(roots)}). Paths are read relative to a data folder "
            f"(e.g. 'flickr8k' means {example}); '..' may not leave it, and an absolute "
            "path must lie within one. To use data kept elsewhere, link it into a data "
            "folder on the server (ln -s /path/to/flickr8k "
            f"{lexical[0]}/) or start the server with another --data-root."
        )
    return next((c for c in inside if _exists(c)), inside[0])


def _exists(path: Path) -> bool:
    # os.path.exists answers False where Path.exists raises (a folder that cannot be searched).
    return os.path.exists(path)


def _check_length(text: str) -> None:
    """ConfigError (a 422) for a path the file system could never hold."""
    longest = max(Path(text).parts, key=lambda part: len(os.fsencode(part)), default="")
    if len(os.fsencode(longest)) > NAME_MAX:
        raise ConfigError(
            f"the name {longest[:24]!r}... is {len(os.fsencode(longest))} bytes long; a file or "
            f"folder name has at most {NAME_MAX}: give the dataset's real path"
        )
    if len(os.fsencode(text)) > PATH_MAX:
        raise ConfigError(
            f"the path is {len(os.fsencode(text))} bytes long; paths have at most {PATH_MAX}: "
            "give the dataset's real path"
        )


def root_links(root: Path) -> list[Path]:
    """The symlinks directly inside `root` (the operator's ``ln -s DATASET root/``)."""
    try:
        with os.scandir(root) as entries:
            return sorted(Path(e.path) for e in entries if e.is_symlink())
    except OSError:
        return []


def _through_link(path: Path, roots: Sequence[Path]) -> Path | None:
    """`path` (absolute, normalised) read through a link placed directly inside a root when it
    lies inside that link's target; None otherwise."""
    for root in roots:
        for link in root_links(root):
            target = Path(os.path.realpath(link))
            if _inside(path, target):
                return link / path.relative_to(target)
    return None


def confine_paths(data: dict, fields: Sequence[str], roots: Sequence[Path]) -> dict:
    """`data` with each named path field confined; each given path must exist (ConfigError)."""
    out = dict(data)
    for name in fields:
        if out.get(name) is None:
            continue
        try:
            path = confine(out[name], roots)
        except ConfigError as exc:  # DataPathError is not one: it stays a 403
            raise ConfigError(f"{name}: {exc}") from None
        broken = next(
            (p for p in [path, *path.parents] if os.path.islink(p) and not _exists(p)), None
        )
        if broken is not None:
            raise ConfigError(
                f"{name}: {out[name]} is read through the link {broken}, which points to "
                f"{os.readlink(broken)}: that does not exist on the server (re-create the "
                "link with the dataset's real location)"
            )
        if not _exists(path):
            raise ConfigError(
                f"{name}: {out[name]} does not exist (looked for {path}; paths are read "
                f"relative to the data folders: {describe_roots(roots)}; GET /api/datasets "
                "lists the datasets found there)"
            )
        out[name] = path
    return out


def confine_dataset_images(cfg: TrainConfig, roots: Sequence[Path]) -> None:
    """The images a job's dataset file names are paths too: each must lie inside a data root
    (DataPathError, quoting none of them; checked before any is looked up, so the answer never
    tells which files outside exist). Reads the dataset as the job will (DatasetError)."""
    for split in dict.fromkeys((cfg.train_split, cfg.dev_split)):
        load_dataset(
            cfg.dataset_format,
            cfg.dataset_path,
            split,
            cfg.images,
            skip_missing=cfg.skip_missing,
            confine_image=lambda image: confine(image, roots),
        )
