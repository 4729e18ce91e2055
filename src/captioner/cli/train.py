"""`captioner train`: one flag per setting of TrainConfig, then train() with progress bars."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_config_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..config import presets

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
    add_config_flags(t)
    t.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import make_config, setting_names
    from ..core.errors import ConfigError
    from ..core.progress import ConsoleReporter, silent
    from ..serving.jobs.process import RunLock

    overrides = {k: getattr(args, k, None) for k in setting_names()}
    cfg = make_config(args.config, args.preset, **overrides)
    # The server's workers hold the same lock: a run folder has one writer, or its checkpoint
    # and metrics.jsonl get two runs' epochs mixed. A held lock is a one-line TrainingError.
    try:
        lock = RunLock(Path(args.out))
    except OSError as exc:
        raise ConfigError(
            f"--out {args.out}: cannot use it as a run folder ({exc.strerror}); choose a folder "
            "that can be written"
        ) from None
    t0 = time.time()
    try:
        from ..training.trainer import train  # torch: seconds, after the checks that are quick

        with ConsoleReporter() as progress:
            path = train(cfg, Path(args.out), report=silent if args.quiet else progress)
    finally:
        lock.release()
    print(f"model saved to {path} ({(time.time() - t0) / 60:.1f} min)")
    return 0
