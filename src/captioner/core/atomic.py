"""Atomic writes: a file or folder is written beside its target and renamed into place, so a
crash, Ctrl-C or full disk never leaves a half-written model, checkpoint, cache or report."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _read_umask() -> int:
    # Read once at import: setting the umask to read it is process-wide, and a server thread
    # creating a file in that moment would make it world-writable.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def _umask() -> int:
    return UMASK


@contextlib.contextmanager
def atomic_write(
    path: str | Path,
    mode: str = "w",
    keep_on: tuple[type[BaseException], ...] = (),
    **open_kwargs,
) -> Iterator[IO]:
    """Open a temp file beside `path`; on success it replaces `path`, on error it vanishes.
    On an exception listed in `keep_on` (e.g. KeyboardInterrupt for a long report) what was
    written so far replaces `path` before the exception goes on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        if "b" not in mode:
            open_kwargs.setdefault("encoding", "utf-8")
        with open(tmp_path, mode, **open_kwargs) as fh:
            try:
                yield fh
            except keep_on:
                _finish(fh, tmp_path, path)
                raise
            _finish(fh, tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _finish(fh: IO, tmp_path: Path, path: Path) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; saved files are ordinary
    os.replace(tmp_path, path)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text)


def write_json(path: str | Path, data: object, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it replaces `path` (the old folder
    is removed only after the swap), on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        mask = _umask()  # mkdtemp makes a private (0700) folder; a saved model is readable
        os.chmod(tmp, 0o777 & ~mask)
        for f in tmp.iterdir():
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
