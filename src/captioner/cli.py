"""The `captioner` command: caption, train, evaluate, features."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import re
import sys
import time
import typing
from pathlib import Path

from pydantic_core import PydanticUndefined

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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


OUTPUT_FORMATS = {
    ".tsv": "tsv",
    ".txt": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
CSV_HEADER = ["image", "caption", "confidence", "tags"]  # image,caption first, as always


class _KeepRows(Exception):  # noqa: N818 - tells atomic_write to keep a partial file
    pass


@contextlib.contextmanager
def _incremental(path: Path, flag: str, keep):
    """A text file written beside `path` and renamed onto it at the end (an atomic write). On
    Ctrl-C, when keep() says so, what was written so far becomes `path`; else `path` is left
    as it was."""
    from .core.atomic import atomic_write
    from .core.errors import ConfigError

    opened = atomic_write(path, newline="", keep_on=(_KeepRows,))
    try:
        fh = opened.__enter__()
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path}: cannot write there ({exc.strerror}); choose another file"
        ) from None
    try:
        yield fh
    except KeyboardInterrupt as exc:
        if keep():
            opened.__exit__(_KeepRows, _KeepRows(), None)  # the rows so far become the file
        else:
            opened.__exit__(type(exc), exc, exc.__traceback__)  # nothing to keep
        raise
    except BaseException as exc:
        opened.__exit__(type(exc), exc, exc.__traceback__)
        raise
    opened.__exit__(None, None, None)


def _format_row(fmt: str, image: Path, d) -> str:
    """One output line for a Description `d` (file names are user input: CSV cells are made
    formula-safe)."""
    from .api import tags_text
    from .core.csvsafe import safe_row

    if fmt == "jsonl":
        tags = [{"label": t.label, "probability": round(t.probability, 4)} for t in d.tags]
        row = {"image": str(image), "caption": d.caption, "confidence": round(d.confidence, 4)}
        return json.dumps({**row, "tags": tags}, ensure_ascii=False) + "\n"
    cells = [str(image), d.caption, f"{d.confidence:.3f}", tags_text(d.tags)]
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerow(safe_row(cells))
        return buf.getvalue()
    return "\t".join(cells) + "\n"


def _images_in(path: Path, fmt: str) -> set[Path]:
    """The images an earlier --out file already has (for --skip-existing), resolved."""
    from .core.csvsafe import safe_cell

    found: set[str] = set()
    with path.open(newline="", encoding="utf-8") as fh:
        if fmt == "csv":
            rows = csv.reader(fh)
            next(rows, None)  # the header
            found = {r[0] for r in rows if r}
        elif fmt == "tsv":
            found = {line.split("\t", 1)[0] for line in fh if line.strip()}
        else:
            for line in fh:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    found.add(json.loads(line)["image"])
    # A CSV cell may carry safe_cell's apostrophe: match the name either way.
    names = found | {n[1:] for n in found if n.startswith("'") and safe_cell(n[1:]) == n}
    return {Path(n).resolve() for n in names}


class _Metadata:
    """`metadata.jsonl` of one folder, in the Hugging Face datasets ImageFolder layout: one
    {"file_name": path relative to the folder, "text": caption} per line. Entries of images
    not captioned in this run are kept; so is an old entry whose image fails or is not
    reached before Ctrl-C."""

    def __init__(self, root: Path) -> None:
        self.root, self.path = root, root / "metadata.jsonl"
        self.old: dict[str, str] = {}  # file_name -> its line, in file order
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    self.old[str(json.loads(line)["file_name"])] = line
        self.fh = None

    def name(self, image: Path) -> str:
        return image.relative_to(self.root).as_posix()

    def open(self, fh, redo: set[str]) -> None:
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


def _output_format(args: argparse.Namespace) -> tuple[Path | None, str, str]:
    """(--out file or None for stdout, format, the flag that named the file)."""
    from .core.errors import ConfigError

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


def cmd_caption(args: argparse.Namespace) -> int:
    import warnings

    from tqdm import tqdm

    from . import Captioner
    from .core.atomic import write_text
    from .core.errors import ConfigError, ImageError
    from .vision.images import pixel_limit

    pixel_limit(args.max_pixels)  # a bad CAPTIONER_MAX_PIXELS fails now, not per image
    out, fmt, flag = _output_format(args)
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

    # Where each image's metadata.jsonl lives: the folder it was found in, else its own.
    folders = [Path(p) for p in args.paths if Path(p).is_dir()]
    root_of = {im: next((f for f in folders if im.is_relative_to(f)), im.parent) for im in images}
    metas = {r: _Metadata(r) for r in dict.fromkeys(root_of.values())} if args.metadata else {}
    resuming = bool(args.skip_existing and out and out.is_file())
    in_out = _images_in(out, fmt) if resuming else set()

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
    if skipped:
        print(f"skipping {skipped} images already captioned", file=sys.stderr)
    if skipped and not todo:  # all done already: no model to load, nothing to rewrite
        return 1 if problems else 0

    failed, rows = len(problems), 0
    bar = tqdm(total=len(todo), unit="image", file=sys.stderr, disable=not sys.stderr.isatty())

    def say(line: str, file=sys.stderr) -> None:  # one line, without breaking the bar
        tqdm.write(line, file=file, end="")
        file.flush()

    try:
        with contextlib.ExitStack() as stack:
            sink, old = None, ""
            if out:
                sink = stack.enter_context(_incremental(out, flag, keep=lambda: rows > 0))
                if resuming:  # append: the earlier rows first, then this run's
                    old = out.read_text(encoding="utf-8")
                    sink.write(old if not old or old.endswith("\n") else old + "\n")
                if fmt == "csv" and not (resuming and old):
                    csv.writer(sink).writerow(CSV_HEADER)
                sink.flush()
            elif fmt == "csv":
                print(",".join(CSV_HEADER), flush=True)
            for root, meta in metas.items():
                fh = stack.enter_context(_incremental(meta.path, "--metadata", keep=lambda: True))
                stack.callback(meta.close)  # runs before its file is finished
                redo = {meta.name(im) for im in todo if root_of[im] == root}
                meta.open(fh, redo)
            cap = Captioner.load(args.model, max_pixels=args.max_pixels)
            decode = cap.decoding.resolve(
                beam_size=args.beam_size, length_penalty=args.length_penalty
            )
            for i in range(0, len(todo), args.batch_size):
                chunk = todo[i : i + args.batch_size]
                try:
                    pairs = list(zip(chunk, cap.describe(chunk, decode=decode), strict=True))
                except ImageError:
                    pairs = []  # one bad file in the batch: retry one by one to isolate it
                    for path in chunk:
                        try:
                            pairs.append((path, cap.describe([path], decode=decode)[0]))
                        except ImageError as exc:
                            failed += 1
                            say("error: " + " ".join(str(exc).split()) + "\n")
                for path, d in pairs:
                    need = wanted[path]
                    if sink is not None and need["out"]:
                        sink.write(_format_row(fmt, path, d))
                        sink.flush()  # an interrupted run keeps every finished row
                        rows += 1
                    elif out is None:
                        say(_format_row(fmt, path, d), file=sys.stdout)
                    if args.sidecar and need.get("sidecar", True):
                        write_text(path.with_suffix(".txt"), d.caption + "\n")
                    if args.metadata and need.get("metadata", True):
                        metas[root_of[path]].write(path, d.caption)
                bar.update(len(chunk))
    except KeyboardInterrupt:
        bar.close()
        kept = ""
        if out:
            kept = (
                f": kept the {rows} captions done so far in {out}"
                if rows
                else f": no captions yet; {out} left as it was"
            )
        print("interrupted" + kept, file=sys.stderr)
        return 130
    bar.close()
    if out:
        print(f"wrote {rows} captions to {out}", file=sys.stderr)
    return 1 if failed else 0


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, so the CLI can never drift from the config object."""
    from .config import TrainConfig

    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        default = "required" if field.default is PydanticUndefined else f"default: {field.default}"
        help_ = f"{field.description} ({default})"
        if ann is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
            continue
        choices = typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else None
        kind = ann if ann in (int, float, str) else (Path if "Path" in str(ann) else str)
        parser.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig, make_config
    from .core.progress import ConsoleReporter, silent
    from .training.trainer import train

    overrides = {k: getattr(args, k) for k in TrainConfig.model_fields}
    cfg = make_config(args.config, args.preset, **overrides)
    t0 = time.time()
    with ConsoleReporter() as progress:
        path = train(cfg, Path(args.out), report=silent if args.quiet else progress)
    print(f"model saved to {path} ({(time.time() - t0) / 60:.1f} min)")
    return 0


def _records(args: argparse.Namespace, split: str) -> list:
    from .data.datasets import load_dataset

    return load_dataset(
        args.dataset_format,
        args.dataset_path,
        split,
        images=args.images,
        skip_missing=args.skip_missing,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import Captioner
    from .core.atomic import write_json
    from .core.progress import ConsoleReporter
    from .evaluation.evaluate import evaluate_model

    cap = Captioner.load(args.model)
    decode = cap.decoding.resolve(beam_size=args.beam_size, length_penalty=args.length_penalty)
    records = _records(args, args.split)
    if args.limit:
        records = records[: args.limit]
    with ConsoleReporter() as progress:
        report = evaluate_model(cap, records, decode, cache_dir=args.cache_dir, report=progress)
    report["dataset"] = {
        "format": args.dataset_format,
        "path": str(args.dataset_path),
        "split": args.split,
        "images": len(records),
    }
    for k, v in report["metrics"].items():
        print(f"{k:8s} {v:.4f}")
    print(
        f"mean caption length {report['mean_length']:.2f} words "
        f"(references {report['reference_mean_length']:.2f})"
    )
    if args.report:
        write_json(args.report, report)
        print(f"report written to {args.report}")
    if args.html:
        from .evaluation.report_html import write_html

        write_html(args.html, report, [r.captions for r in records])
        print(f"HTML report written to {args.html}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from .core.progress import ConsoleReporter
    from .decoders.registry import decoder_input
    from .vision.features import extract_features
    from .vision.registry import get_spec

    get_spec(args.encoder)  # an unknown name fails before any data is read
    for split in args.splits.split(","):
        records = _records(args, split)
        with ConsoleReporter() as progress:
            feats = extract_features(
                [r.image for r in records],
                args.encoder,
                cache_dir=args.cache_dir,
                workers=args.workers,
                report=progress,
                grid=decoder_input(args.decoder) == "grid",
            )
        shape = " x ".join(map(str, feats.shape[1:]))
        print(f"{split}: {feats.shape[0]} images x {shape} features cached")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import threading
    import webbrowser

    import uvicorn

    from .core.errors import ConfigError
    from .serving.security import check_exposure
    from .serving.server import ServerSettings, create_app

    token = args.token or os.environ.get("CAPTIONER_TOKEN") or None
    # Decide before anything binds: off loopback, state-changing routes need a token.
    exposure = check_exposure(
        args.host,
        token=token,
        insecure=args.insecure,
        allow_training=not args.disable_training,
        public_captioning=args.public_captioning,
    )
    if not exposure.ok:
        raise ConfigError(exposure.message)
    from .vision.images import pixel_limit

    pixel_limit()  # a bad CAPTIONER_MAX_PIXELS fails at start, not on every upload
    settings = ServerSettings(
        model=args.model,
        allow_training=not args.disable_training,
        data_roots=args.data_root or [],
        max_upload_mb=args.max_upload_mb,
        token=token,
        public_captioning=args.public_captioning,
        host=args.host,
        allowed_hosts=args.allowed_host or [],
        max_request_mb=args.max_request_mb,
        rate_limit=args.rate_limit,
        max_jobs=args.max_jobs,
    )
    if args.state_dir:
        settings.state_dir = args.state_dir
    app = create_app(settings)
    url = f"http://{args.host}:{args.port}/"
    print(f"captioner is serving {url} (training {'off' if args.disable_training else 'on'})")
    print(exposure.message, flush=True)
    if args.open:
        threading.Timer(1.5, webbrowser.open, (url,)).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data.download import download_coco

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    download_coco(
        args.dest,
        splits,
        with_images=args.with_images,
        base_url=args.base_url,
        checksums=args.checksums,
        keep_archives=args.keep_archives,
    )
    print(
        f"COCO-2017 is ready in {args.dest}: captioner train --dataset-format coco "
        f"--dataset-path {args.dest} --dev-split val ..."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import DATASET_FORMATS, presets

    p = argparse.ArgumentParser(
        prog="captioner",
        description="Describe photos in one sentence, "
        "and train and evaluate the models that do it.",
    )
    p.add_argument("--version", action="version", version=f"captioner {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    c.add_argument(
        "--beam-size", type=positive_int, default=None, help="beam size (default: the model's)"
    )
    c.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        help="beam length normalisation (default: the model's)",
    )
    c.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the results to FILE instead of stdout, rows as they are produced "
        "(Ctrl-C keeps those done so far); the format comes from its extension "
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

    t = sub.add_parser(
        "train",
        help="train a model",
        description="Train a caption model (Show and Tell, or soft attention with --decoder "
        "attention). Settings come from defaults, "
        "then --preset, then --config (TOML/YAML), then flags. Re-running with "
        "the same --out resumes from the last checkpoint.",
    )
    t.add_argument("--out", type=Path, required=True, help="run folder (model/ is written here)")
    t.add_argument("--config", type=Path, default=None, help="TOML or YAML settings file")
    t.add_argument(
        "--preset",
        default=None,
        choices=presets(),
        help="named recipe shipped with captioner: default (the bundled model's: attention, "
        "class evidence, self-critical epochs) or seed-coco (the original project's ResNet-50 "
        "COCO recipe)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    # The same names as `train`'s flags (--format/--data are kept as older spellings).
    data_flags = argparse.ArgumentParser(add_help=False)
    data_flags.add_argument(
        "--dataset-format",
        "--format",
        dest="dataset_format",
        choices=DATASET_FORMATS,
        default="flickr8k",
        help="dataset format (default flickr8k)",
    )
    data_flags.add_argument(
        "--dataset-path",
        "--data",
        dest="dataset_path",
        type=Path,
        required=True,
        help="dataset folder, or captions CSV/JSONL",
    )
    data_flags.add_argument(
        "--images", type=Path, default=None, help="image folder for a captions file"
    )
    data_flags.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip images that do not exist instead of failing",
    )
    data_flags.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache folder (default ~/.cache/captioner)",
    )

    e = sub.add_parser(
        "evaluate",
        parents=[data_flags],
        help="score a model on a dataset split",
        description="BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (pycocoevalcap; needs Java).",
    )
    e.add_argument("--model", type=Path, default=None, help="model folder (default: bundled)")
    e.add_argument("--split", default="dev", help="split to score (default dev)")
    e.add_argument(
        "--beam-size", type=positive_int, default=None, help="beam size (default: model's)"
    )
    e.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        help="beam length normalisation (default: model's)",
    )
    e.add_argument("--limit", type=int, default=None, help="score only the first N images")
    e.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    e.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="FILE",
        help="write a self-contained HTML page: scores, then every photo with its caption, "
        "references and CIDEr-D, worst first",
    )
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "serve",
        help="run the web app and HTTP API",
        description="Caption uploads in the browser (and, unless "
        "--disable-training, train and manage models). API docs at /docs.",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    s.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model folder to use as the default (default: the bundled model)",
    )
    s.add_argument(
        "--disable-training",
        action="store_true",
        help="caption-only public mode: no training routes or page",
    )
    s.add_argument(
        "--data-root",
        type=Path,
        action="append",
        help="folder whose datasets the Train page may use (repeatable)",
    )
    s.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="models, jobs and runs (default ~/.local/share/captioner)",
    )
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (20 MB)")
    s.add_argument(
        "--max-request-mb",
        type=float,
        default=256.0,
        help="largest request body, all photos together (256 MB)",
    )
    s.add_argument(
        "--token",
        default=None,
        help="access token for training, model changes and captioning (default: the "
        "CAPTIONER_TOKEN environment variable, which `ps` cannot show); required off loopback "
        "unless --disable-training or --insecure",
    )
    s.add_argument(
        "--public-captioning",
        action="store_true",
        help="with a token, let anyone caption (the token still guards everything else)",
    )
    s.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a DNS name the server is reached by (repeatable; requests for other names are "
        "refused against DNS rebinding; localhost and IP addresses always work)",
    )
    s.add_argument(
        "--max-jobs",
        type=positive_int,
        default=1,
        help="training jobs that run at once; more wait queued (default 1)",
    )
    s.add_argument(
        "--rate-limit",
        type=float,
        default=120.0,
        metavar="PER_MIN",
        help="photos per minute per client address, in bursts of up to max(PER_MIN, 100); "
        "loopback clients are exempt; 0 turns it off (default 120)",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="serve training and model changes off loopback with NO token (trusted networks only)",
    )
    s.add_argument("--open", action="store_true", help="open the browser")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser(
        "download",
        help="download a dataset (COCO-2017)",
        description="Fetch the official COCO-2017 archives into DEST/images/"
        "{train,val}2017 and DEST/annotations. Resumes, verifies MD5s, extracts "
        "safely; a second run does nothing.",
    )
    d.add_argument("dataset", choices=["coco"], help="dataset to download")
    d.add_argument(
        "--dest", type=Path, default=Path("data/coco"), help="target folder (default data/coco)"
    )
    d.add_argument("--splits", default="train,val", help="image splits (default train,val)")
    d.add_argument(
        "--with-images",
        dest="with_images",
        action="store_true",
        default=True,
        help="download images and annotations (default)",
    )
    d.add_argument(
        "--annotations-only",
        dest="with_images",
        action="store_false",
        help="only the caption annotations (~240 MB)",
    )
    d.add_argument(
        "--base-url",
        default=None,
        help="mirror replacing http://images.cocodataset.org (same zips/ and annotations/ paths)",
    )
    d.add_argument(
        "--checksums",
        type=Path,
        default=None,
        help="JSON file {archive name: MD5} replacing the built-in table",
    )
    d.add_argument("--keep-archives", action="store_true", help="keep the zips after extraction")
    d.set_defaults(func=cmd_download)

    f = sub.add_parser("features", parents=[data_flags], help="precompute the feature cache")
    f.add_argument(
        "--encoder", default="efficientnet_lite0", help="encoder name (default efficientnet_lite0)"
    )
    f.add_argument(
        "--decoder",
        choices=["show_and_tell", "attention"],
        default="show_and_tell",
        help="the decoder the features are for: attention caches spatial grids "
        "(default show_and_tell: pooled features)",
    )
    f.add_argument("--splits", default="train,dev", help="comma-separated splits")
    f.add_argument("--workers", type=int, default=1, help="image-loading processes")
    f.set_defaults(func=cmd_features)
    return p


def main(argv: list[str] | None = None) -> int:
    from .core.errors import CaptionerError
    from .core.progress import StopTraining

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s"
    )
    try:
        return args.func(args)
    except CaptionerError as exc:  # every known problem: one line (or a short list), no trace
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StopTraining:
        return 130
    except KeyboardInterrupt:
        print(
            "interrupted (a training run resumes when the same command is run again)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
