"""Where `captioner caption` writes: the --out/--csv file (its format, the rows an earlier run
left in it) and each folder's ImageFolder `metadata.jsonl`, all written incrementally."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from ..core.atomic import atomic_write
from ..core.csvsafe import safe_cell, tsv_text
from ..core.errors import ConfigError

OUTPUT_FORMATS = {
    ".tsv": "tsv",
    ".txt": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


class _KeepRows(Exception):  # noqa: N818 - a signal, not an error
    """Tells atomic_write to keep a partial file; carries the Ctrl-C it stands for."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__()
        self.interrupt = interrupt


@contextlib.contextmanager
def incremental(path: Path, flag: str, keep: Callable[[], bool]) -> Iterator[IO[str]]:
    """A text file written beside `path` and renamed onto it at the end (an atomic write). On
    Ctrl-C, when keep() says so, what was written so far becomes `path`; else `path` is left
    as it was. A place that cannot be written is a one-line error naming `flag`."""
    try:
        with contextlib.ExitStack() as stack:
            try:
                fh = stack.enter_context(atomic_write(path, newline="", keep_on=(_KeepRows,)))
            except OSError as exc:  # opening only: a write failing later is not the flag's fault
                raise ConfigError(
                    f"{flag} {path}: cannot write there ({exc.strerror}); choose another file"
                ) from None
            try:
                yield fh
            except KeyboardInterrupt as exc:
                if not keep():
                    raise  # atomic_write drops its temp file: `path` stays as it was
                raise _KeepRows(exc) from None  # atomic_write makes the rows so far `path`
    except _KeepRows as kept:
        # The caller sees its own Ctrl-C again: the same object, so an ExitStack passes it on.
        raise kept.interrupt from None


def read_lines(path: Path, flag: str) -> list[str]:
    """The lines of an earlier output, line ends kept, or a one-line ConfigError naming the
    first line that is not UTF-8: such a file was not written by this command. (Only --out
    can name another file: metadata.jsonl has its name.)"""
    elsewhere = ", or choose another file" if flag != "--metadata" else ""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path}: cannot read it ({exc.strerror}); allow reading it{elsewhere}"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{flag} {path}: line {line} is not UTF-8 text, so it is no output of this command; "
            f"fix or remove that line{elsewhere} (it was left as it is)"
        ) from None
    # Split on \n and \r only, as csv does: a row may hold other Unicode line separators.
    return list(io.StringIO(text, newline=""))


def images_in(path: Path, fmt: str, flag: str = "--out") -> set[Path]:
    """The images an earlier --out file already has (for --skip-existing), resolved. A file
    this command cannot have written is a one-line ConfigError naming the line."""
    lines = read_lines(path, flag)

    def bad(lineno: int, expected: str) -> ConfigError:
        return ConfigError(
            f"{flag} {path}: line {lineno} is not {expected}, so the file is no {fmt} output "
            "of this command; fix or remove that line, or choose another file (it was left as "
            "it is)"
        )

    found: set[str] = set()
    if fmt == "csv":
        reader = csv.reader(lines)
        try:
            rows = list(reader)
        except csv.Error:
            raise bad(reader.line_num, "a CSV row") from None
        if rows and rows[0][:1] != ["image"]:
            raise bad(1, "the header image,caption,confidence,tags")
        found = {r[0] for r in rows[1:] if r}
    elif fmt == "tsv":  # cells are escaped (tsv_cell): a file name may hold a tab or newline
        found = {tsv_text(ln.split("\t", 1)[0].rstrip("\r\n")) for ln in lines if ln.strip()}
    else:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                image = json.loads(line).get("image")
            except (ValueError, AttributeError, RecursionError):  # not JSON, or not an object
                image = None
            if not isinstance(image, str) or not image:
                raise bad(lineno, 'a JSON object with an "image" file name')
            found.add(image)
    # A CSV cell may carry safe_cell's apostrophe: match the name either way.
    names = found | {n[1:] for n in found if n.startswith("'") and safe_cell(n[1:]) == n}
    return {Path(n).resolve() for n in names if "\0" not in n}  # no file name holds a NUL


class Metadata:
    """`metadata.jsonl` of one folder, in the Hugging Face datasets ImageFolder layout: one
    {"file_name": path relative to the folder, "text": caption} per line. Entries of images
    not captioned in this run are kept; so is an old entry whose image fails or is not
    reached before Ctrl-C."""

    def __init__(self, root: Path) -> None:
        self.root, self.path = root, root / "metadata.jsonl"
        self.old: dict[str, str] = {}  # file_name -> its line, in file order
        if self.path.is_file():
            self._read()
        self.fh: IO[str] | None = None

    def _read(self) -> None:
        """The entries already there. The file is rewritten, so a line that cannot be kept as
        it is stops the run rather than being dropped."""
        for lineno, line in enumerate(read_lines(self.path, "--metadata"), 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                name = json.loads(line).get("file_name")
            except (ValueError, AttributeError, RecursionError):  # not JSON, or not an object
                name = None
            if not isinstance(name, str) or not name:
                raise ConfigError(
                    f"--metadata {self.path}: line {lineno} is not an ImageFolder entry (a JSON "
                    'object with a "file_name"); fix or remove that line (it was left as it is)'
                )
            self.old[name] = line

    def name(self, image: Path) -> str:
        return image.relative_to(self.root).as_posix()

    def open(self, fh: IO[str], redo: set[str]) -> None:
        """Start the new file: old entries not being redone now, then new ones as they come."""
        self.fh, self.pending = fh, {k: v for k, v in self.old.items() if k in redo}
        for name, line in self.old.items():
            if name not in redo:
                fh.write(line + "\n")
        fh.flush()

    def write(self, image: Path, caption: str) -> None:
        name = self.name(image)
        self.pending.pop(name, None)
        self.fh.write(json.dumps({"file_name": name, "text": caption}, ensure_ascii=False) + "\n")
        self.fh.flush()

    def close(self) -> None:
        for line in self.pending.values():  # failed or not reached: keep what was there
            self.fh.write(line + "\n")
        self.pending = {}


def output_format(args: argparse.Namespace) -> tuple[Path | None, str, str]:
    """(--out file or None for stdout, format, the flag that named the file)."""
    if args.csv and args.out:
        raise ConfigError(
            "give --csv FILE or --out FILE, not both (--csv F is --out F --format csv)"
        )
    if args.csv:
        if args.format not in (None, "csv"):
            raise ConfigError(f"--csv writes CSV; for {args.format} use --out FILE")
        return args.csv, "csv", "--csv"
    if args.out and not args.format:
        fmt = OUTPUT_FORMATS.get(args.out.suffix.lower())
        if fmt is None:
            raise ConfigError(
                f"--out {args.out}: cannot tell the format from its extension "
                "(.tsv, .csv, .jsonl); add --format tsv|csv|jsonl"
            )
        return args.out, fmt, "--out"
    return args.out, args.format or "tsv", "--out"
