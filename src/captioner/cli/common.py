"""What several commands share: flags generated from the config objects, the dataset flags,
and small argument types."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from pydantic_core import PydanticUndefined


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_flags(
    parser: argparse.ArgumentParser, model: type, skip: tuple[str, ...] = (), default: str = ""
) -> None:
    """One flag per field of a pydantic model (TrainConfig, DecodeConfig), so the CLI can never
    drift from the config objects. `default`: the help's default text instead of the field's."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        ann = field.annotation
        if name in skip or (isinstance(ann, type) and issubclass(ann, BaseModel)):
            continue
        flag = "--" + name.replace("_", "-")
        if default:
            shown = default
        elif field.default is PydanticUndefined:
            shown = "required"
        else:
            shown = f"default: {field.default}"
        help_ = f"{field.description} ({shown})"
        if ann is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
            continue
        extra = field.json_schema_extra or {}
        choices = typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else None
        choices = choices or extra.get("enum")
        kind = ann if ann in (int, float, str) else (Path if "Path" in str(ann) else str)
        parser.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Training's settings, decoding's among them (flat: --beam-size sets decode.beam_size)."""
    from ..config import DecodeConfig, TrainConfig

    add_model_flags(parser, TrainConfig)
    add_model_flags(parser, DecodeConfig, skip=("max_len",))  # --max-len is training's too


def add_decode_flags(parser: argparse.ArgumentParser) -> None:
    """Decoding overrides for caption/evaluate: the same names and limits as everywhere."""
    from ..config import DecodeConfig

    add_model_flags(parser, DecodeConfig, default="default: the model's own")


def decode_overrides(args: argparse.Namespace) -> dict:
    from ..config import DecodeConfig

    return {k: getattr(args, k, None) for k in DecodeConfig.model_fields}


def dataset_flags() -> argparse.ArgumentParser:
    """A parent parser with the dataset flags of evaluate and features: the same names as
    `train`'s flags (--format/--data are kept as older spellings)."""
    from ..config import DATASET_FORMATS

    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--dataset-format",
        "--format",
        dest="dataset_format",
        choices=DATASET_FORMATS,
        default="flickr8k",
        help="dataset format (default flickr8k)",
    )
    flags.add_argument(
        "--dataset-path",
        "--data",
        dest="dataset_path",
        type=Path,
        required=True,
        help="dataset folder, or captions CSV/JSONL",
    )
    flags.add_argument("--images", type=Path, default=None, help="image folder for a captions file")
    flags.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip images that do not exist instead of failing",
    )
    flags.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="feature cache folder (default ~/.cache/captioner)",
    )
    return flags


def records(args: argparse.Namespace, split: str) -> list:
    """The records of one split of the dataset the dataset flags name."""
    from ..data.datasets import load_dataset

    return load_dataset(
        args.dataset_format,
        args.dataset_path,
        split,
        images=args.images,
        skip_missing=args.skip_missing,
    )
