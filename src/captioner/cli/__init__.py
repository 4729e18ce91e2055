"""The `captioner` command. Each command is one module that adds its own subparser
(`add_parser`) and runs it (`cmd_*`); `main` turns every known problem into one line."""

from __future__ import annotations

import argparse
import logging
import sys

from . import caption, download, evaluate, features, serve, train

__all__ = ["build_parser", "main"]

# In the order `captioner --help` lists them.
COMMANDS = (caption, train, evaluate, serve, download, features)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="captioner",
        description="Describe photos in one sentence, "
        "and train and evaluate the models that do it.",
    )
    p.add_argument("--version", action="version", version=f"captioner {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..core.errors import CaptionerError
    from ..core.progress import StopTraining

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
