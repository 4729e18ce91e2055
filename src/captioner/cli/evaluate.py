"""`captioner evaluate`: score a model on a dataset split; optional JSON and HTML reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_decode_flags, dataset_flags, decode_overrides, records


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        parents=[dataset_flags()],
        help="score a model on a dataset split",
        description="BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (pycocoevalcap; needs Java).",
    )
    e.add_argument("--model", type=Path, default=None, help="model folder (default: bundled)")
    e.add_argument("--split", default="dev", help="split to score (default dev)")
    add_decode_flags(e)
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .. import Captioner
    from ..core.atomic import write_json
    from ..core.progress import ConsoleReporter
    from ..evaluation.evaluate import evaluate_model

    cap = Captioner.load(args.model)
    decode = cap.decoding_for(**decode_overrides(args))
    split = records(args, args.split)
    if args.limit:
        split = split[: args.limit]
    with ConsoleReporter() as progress:
        report = evaluate_model(cap, split, decode, cache_dir=args.cache_dir, report=progress)
    report["dataset"] = {
        "format": args.dataset_format,
        "path": str(args.dataset_path),
        "split": args.split,
        "images": len(split),
    }
    for k, v in report["metrics"].items():
        print(f"{k:8s} {v:.4f}")
    print(
        f"mean caption length {report['mean_length']:.2f} words "
        f"(references {report['reference_mean_length']:.2f})"
    )
    o = report["objects"]
    print(
        f"objects  precision {o['precision']:.3f}  recall {o['recall']:.3f}  F1 {o['f1']:.3f} "
        f"({o['positives']} named by >= 2 references); contradictions {o['contradictions']:.1%}"
    )
    if args.report:
        write_json(args.report, report)
        print(f"report written to {args.report}")
    if args.html:
        from ..evaluation.report_html import write_html

        write_html(args.html, report, [r.captions for r in split])
        print(f"HTML report written to {args.html}")
    return 0
