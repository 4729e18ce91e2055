"""`captioner features`: fill the feature cache for some splits of a dataset."""

from __future__ import annotations

import argparse

from .common import dataset_flags, records


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..decoders.registry import DECODERS

    f = sub.add_parser("features", parents=[dataset_flags()], help="precompute the feature cache")
    f.add_argument(
        "--encoder", default="efficientnet_lite0", help="encoder name (default efficientnet_lite0)"
    )
    f.add_argument(
        "--decoder",
        choices=list(DECODERS),
        default="show_and_tell",
        help="the decoder the features are for: attention caches spatial grids "
        "(default show_and_tell: pooled features)",
    )
    f.add_argument("--splits", default="train,dev", help="comma-separated splits")
    f.add_argument("--workers", type=int, default=1, help="image-loading processes")
    f.set_defaults(func=cmd_features)


def cmd_features(args: argparse.Namespace) -> int:
    from ..core.progress import ConsoleReporter
    from ..decoders.registry import decoder_input
    from ..vision.features import extract_features
    from ..vision.registry import get_spec

    get_spec(args.encoder)  # an unknown name fails before any data is read
    for split in args.splits.split(","):
        images = [r.image for r in records(args, split)]
        with ConsoleReporter() as progress:
            feats = extract_features(
                images,
                args.encoder,
                cache_dir=args.cache_dir,
                workers=args.workers,
                report=progress,
                grid=decoder_input(args.decoder) == "grid",
            )
        shape = " x ".join(map(str, feats.shape[1:]))
        print(f"{split}: {feats.shape[0]} images x {shape} features cached")
    return 0
