"""`captioner download coco`: fetch COCO-2017 (resumable, MD5-checked)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
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


def cmd_download(args: argparse.Namespace) -> int:
    from ..data.download import download_coco

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
