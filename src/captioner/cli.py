"""The `captioner` command: caption, train, evaluate, features."""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
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
                    f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        elif p.is_file():
            found.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    return found, problems


@contextlib.contextmanager
def _csv_output(path: Path | None):
    """A csv.writer into an atomic file, or None (print to stdout). Ctrl-C keeps the rows done
    so far in FILE; with none done yet, FILE is left as it was."""
    if path is None:
        yield None
        return
    from .core.atomic import atomic_write
    from .core.errors import ConfigError

    opened = atomic_write(path, newline="", keep_on=(_KeepRows,))
    try:
        fh = opened.__enter__()
    except OSError as exc:
        raise ConfigError(
            f"--csv {path}: cannot write there ({exc.strerror}); choose another file"
        ) from None
    writer = _Flushing(csv.writer(fh), fh)
    writer.writer.writerow(["image", "caption"])
    try:
        yield writer
    except KeyboardInterrupt as exc:
        if writer.rows:
            keep = _KeepRows()
            opened.__exit__(_KeepRows, keep, None)  # the rows so far become FILE
        else:
            opened.__exit__(type(exc), exc, exc.__traceback__)  # nothing to keep
        raise
    except BaseException as exc:
        opened.__exit__(type(exc), exc, exc.__traceback__)
        raise
    opened.__exit__(None, None, None)


class _KeepRows(Exception):  # noqa: N818 - tells atomic_write to keep a partial CSV
    pass


class _Flushing:
    """A csv.writer that flushes each row, so an interrupted run keeps every finished row."""

    def __init__(self, writer, fh) -> None:
        self.writer, self.fh, self.rows = writer, fh, 0

    def writerow(self, row: list[str]) -> None:
        self.writer.writerow(row)
        self.fh.flush()
        self.rows += 1


def cmd_caption(args: argparse.Namespace) -> int:
    import warnings

    from . import Captioner
    from .core.csvsafe import safe_row
    from .core.errors import ImageError
    from .vision.images import pixel_limit

    pixel_limit(args.max_pixels)  # a bad CAPTIONER_MAX_PIXELS fails now, not per image
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
    failed, rows = len(problems), 0
    try:
        # --csv: rows go to a temp file beside FILE as they are produced; it becomes FILE at
        # the end, or on Ctrl-C with the rows done so far.
        with _csv_output(args.csv) as writer:
            cap = Captioner.load(args.model, max_pixels=args.max_pixels)
            decode = cap.decoding.resolve(
                beam_size=args.beam_size, length_penalty=args.length_penalty
            )
            for i in range(0, len(images), args.batch_size):
                chunk = images[i : i + args.batch_size]
                try:
                    pairs = list(zip(chunk, cap.caption(chunk, decode=decode), strict=True))
                except ImageError:
                    pairs = []  # one bad file in the batch: retry one by one to isolate it
                    for path in chunk:
                        try:
                            pairs.append((path, cap.caption([path], decode=decode)[0]))
                        except ImageError as exc:
                            failed += 1
                            print("error: " + " ".join(str(exc).split()), file=sys.stderr)
                for path, caption in pairs:
                    if writer:
                        writer.writerow(safe_row([path, caption]))  # file names are user input
                        rows += 1
                    else:
                        print(f"{path}\t{caption}", flush=True)
    except KeyboardInterrupt:
        kept = ""
        if args.csv:
            kept = (
                f": kept the {rows} captions done so far in {args.csv}"
                if rows
                else f": no captions yet; {args.csv} left as it was"
            )
        print("interrupted" + kept, file=sys.stderr)
        return 130
    if args.csv:
        print(f"wrote {rows} captions to {args.csv}", file=sys.stderr)
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
        "--csv",
        type=Path,
        default=None,
        help="write image,caption rows to this CSV (Ctrl-C keeps the rows done so far)",
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
