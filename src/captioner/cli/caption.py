"""`captioner caption`: caption image files and folders, to stdout or a tsv/csv/jsonl file
(rows as they are produced), sidecar .txt files and ImageFolder metadata.jsonl; resumable with
--skip-existing."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .common import add_decode_flags, decode_overrides, positive_int
from .inputs import IMAGE_SUFFIXES, find_images, is_folder
from .outputs import Metadata, images_in, incremental, output_format

if TYPE_CHECKING:  # the api imports torch: only when captioning
    from tqdm import tqdm

    from ..api import Captioner, Description
    from ..config import DecodeConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "caption",
        help="caption image files and folders",
        description="Print 'image<TAB>caption' for each image (folders are "
        "searched recursively). Exit status 1 if any file could not be read.",
    )
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    c.add_argument(
        "--model", type=Path, default=None, help="model folder (default: the bundled model)"
    )
    add_decode_flags(c)
    _add_output_flags(c)
    c.add_argument(
        "--batch-size", type=positive_int, default=16, help="images per batch (default 16)"
    )
    c.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        help="largest image to decode, in pixels, checked before decoding "
        "(default: $CAPTIONER_MAX_PIXELS, else 120000000)",
    )
    c.set_defaults(func=cmd_caption)


def _add_output_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the results to FILE instead of stdout, rows as they are produced "
        "(Ctrl-C or SIGTERM keeps those done so far); the format comes from its extension "
        "(.tsv, .csv, .jsonl) unless --format is given",
    )
    c.add_argument(
        "--format",
        choices=["tsv", "csv", "jsonl"],
        default=None,
        help="tsv: image<TAB>caption<TAB>confidence<TAB>tags (the default on stdout); csv: "
        "header image,caption,confidence,tags; jsonl: {image, caption, confidence, tags}",
    )
    c.add_argument(
        "--csv",
        type=Path,
        default=None,
        metavar="FILE",
        help="the same as --out FILE --format csv",
    )
    c.add_argument(
        "--sidecar",
        action="store_true",
        help="also write each caption beside its image: photo.jpg -> photo.txt",
    )
    c.add_argument(
        "--metadata",
        action="store_true",
        help="also write metadata.jsonl in each folder given ({file_name, text} per image: "
        "the Hugging Face datasets ImageFolder layout); other images' entries are kept",
    )
    c.add_argument(
        "--skip-existing",
        action="store_true",
        help="resume: skip images already in the --out file, with a sidecar, or in "
        "metadata.jsonl (new rows are appended to the existing --out file)",
    )


def cmd_caption(args: argparse.Namespace) -> int:
    import warnings

    from tqdm import tqdm

    from ..core.errors import ConfigError
    from ..vision.images import pixel_limit

    pixel_limit(args.max_pixels)  # a bad CAPTIONER_MAX_PIXELS fails now, not per image
    out, fmt, flag = output_format(args)
    if args.skip_existing and not (out or args.sidecar or args.metadata):
        raise ConfigError(
            "--skip-existing needs somewhere to look: --out FILE, --csv FILE, --sidecar "
            "or --metadata"
        )
    # PIL's warnings (bomb size, corrupt EXIF) are noise here: open_image either copes with
    # the file or says in one line what is wrong with it and how to fix it.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    images, problems = find_images(args.paths)
    for msg in problems:
        print(f"error: {msg}", file=sys.stderr)
    if not images and not problems:
        print(
            "error: no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")",
            file=sys.stderr,
        )
        return 1

    run = _Run.plan(args, images, out, fmt, flag)
    if run.skipped:
        print(f"skipping {run.skipped} images already captioned", file=sys.stderr)
    if run.skipped and not run.todo:  # all done already: no model to load, nothing to rewrite
        return 1 if problems else 0
    run.failed = len(problems)
    bar = tqdm(total=len(run.todo), unit="image", file=sys.stderr, disable=not sys.stderr.isatty())
    term = _Caught()
    try:
        with _sigterm_as_interrupt(term):
            run.caption_all(bar)
    except KeyboardInterrupt:
        bar.close()
        print(("terminated" if term.caught else "interrupted") + run.kept(), file=sys.stderr)
        return 128 + signal.SIGTERM if term.caught else 130  # 143, as if killed; else Ctrl-C's
    bar.close()
    if out:
        print(f"wrote {run.rows} captions to {out}", file=sys.stderr)
    return 1 if run.failed else 0


class _Caught:
    caught = False  # a SIGTERM arrived


@contextlib.contextmanager
def _sigterm_as_interrupt(term: _Caught) -> Iterator[None]:
    """SIGTERM (kill, systemd, docker stop) stops the run the way Ctrl-C does, so the rows so
    far are kept; `term.caught` tells which one it was. Off the main thread signals cannot be
    handled: there it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        if not term.caught:  # a second one must not cut short the saving of the first
            term.caught = True
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(line: str, file: IO[str] | None = None) -> None:
    """One line (stderr by default), without breaking the progress bar."""
    from tqdm import tqdm

    if file is None:
        file = sys.stderr  # looked up at each call, not at import: tests swap sys.stderr
    tqdm.write(line, file=file, end="")
    file.flush()


@dataclass
class _Run:
    """One `caption` run: where it writes, which outputs each image still lacks, and how far
    it has got."""

    args: argparse.Namespace
    out: Path | None  # None: rows go to stdout
    fmt: str
    flag: str  # the flag that named `out`, for errors
    resuming: bool  # appending to an earlier --out file
    root_of: dict[Path, Path]  # image -> the folder whose metadata.jsonl lists it
    metas: dict[Path, Metadata]
    wanted: dict[Path, dict[str, bool]]  # image -> output -> still lacks this image
    todo: list[Path]
    skipped: int
    failed: int = 0
    rows: int = 0  # written to `out`

    @classmethod
    def plan(
        cls, args: argparse.Namespace, images: list[Path], out: Path | None, fmt: str, flag: str
    ) -> _Run:
        """Which images to caption: all of them, or with --skip-existing those some output
        still lacks."""
        # Where each image's metadata.jsonl lives: the folder it was found in, else its own.
        folders = [Path(p) for p in args.paths if is_folder(Path(p))]
        root_of = {
            im: next((f for f in folders if im.is_relative_to(f)), im.parent) for im in images
        }
        metas = {r: Metadata(r) for r in dict.fromkeys(root_of.values())} if args.metadata else {}
        resuming = bool(args.skip_existing and out and out.is_file())
        in_out = images_in(out, fmt, flag) if resuming else set()

        def missing(im: Path) -> dict[str, bool]:
            """Which outputs still lack this image (all of them without --skip-existing)."""
            todo = {"out": True}
            if args.skip_existing:
                todo["out"] = bool(out) and im.resolve() not in in_out
                if args.sidecar:
                    todo["sidecar"] = not im.with_suffix(".txt").exists()
                if args.metadata:
                    todo["metadata"] = metas[root_of[im]].name(im) not in metas[root_of[im]].old
            return todo

        wanted = {im: missing(im) for im in images}
        todo = [im for im in images if not args.skip_existing or any(wanted[im].values())]
        skipped = len(images) - len(todo)
        return cls(args, out, fmt, flag, resuming, root_of, metas, wanted, todo, skipped)

    def caption_all(self, bar: tqdm) -> None:
        """Caption the images to do, batch by batch, each row written as soon as it exists."""
        from .. import Captioner

        with contextlib.ExitStack() as stack:
            sink = self._open_outputs(stack)
            cap = Captioner.load(self.args.model, max_pixels=self.args.max_pixels)
            decode = cap.decoding_for(**decode_overrides(self.args))
            size = self.args.batch_size
            for i in range(0, len(self.todo), size):
                chunk = self.todo[i : i + size]
                for path, d in self._describe(cap, chunk, decode):
                    self._write(sink, path, d)
                bar.update(len(chunk))

    def _open_outputs(self, stack: contextlib.ExitStack) -> IO[str] | None:
        """Open the --out file (None for stdout) and each metadata.jsonl; `stack` finishes
        them. Earlier rows come first when resuming."""
        from ..api import csv_header

        sink = None
        if self.out:
            sink = stack.enter_context(incremental(self.out, self.flag, keep=lambda: self.rows > 0))
            old = ""
            if self.resuming:  # append: the earlier rows first, then this run's
                old = self.out.read_text(encoding="utf-8")
                sink.write(old if not old or old.endswith("\n") else old + "\n")
            if self.fmt == "csv" and not (self.resuming and old):
                sink.write(csv_header())
            sink.flush()
        elif self.fmt == "csv":
            print(csv_header(), end="", flush=True)
        for root, meta in self.metas.items():
            fh = stack.enter_context(incremental(meta.path, "--metadata", keep=lambda: True))
            stack.callback(meta.close)  # runs before its file is finished
            redo = {meta.name(im) for im in self.todo if self.root_of[im] == root}
            meta.open(fh, redo)
        return sink

    def _describe(
        self, cap: Captioner, chunk: list[Path], decode: DecodeConfig
    ) -> list[tuple[Path, Description]]:
        """(image, description) for each image of `chunk` that could be read."""
        from ..core.errors import ImageError

        try:
            return list(zip(chunk, cap.describe(chunk, decode=decode), strict=True))
        except ImageError:
            pairs = []  # one bad file in the batch: retry one by one to isolate it
            for path in chunk:
                try:
                    pairs.append((path, cap.describe([path], decode=decode)[0]))
                except ImageError as exc:
                    self.failed += 1
                    _say("error: " + " ".join(str(exc).split()) + "\n")
            return pairs

    def _write(self, sink: IO[str] | None, path: Path, d: Description) -> None:
        """One image's caption to every output that still lacks it."""
        from ..api import format_row
        from ..core.atomic import write_text

        need = self.wanted[path]
        if sink is not None and need["out"]:
            sink.write(format_row(self.fmt, path, d))
            sink.flush()  # an interrupted run keeps every finished row
            self.rows += 1
        elif self.out is None:
            _say(format_row(self.fmt, path, d), file=sys.stdout)
        if self.args.sidecar and need.get("sidecar", True):
            write_text(path.with_suffix(".txt"), d.caption + "\n")
        if self.args.metadata and need.get("metadata", True):
            self.metas[self.root_of[path]].write(path, d.caption)

    def kept(self) -> str:
        """What an interrupted run says it left in the --out file."""
        if not self.out:
            return ""
        if self.rows:
            return f": kept the {self.rows} captions done so far in {self.out}"
        return f": no captions yet; {self.out} left as it was"
