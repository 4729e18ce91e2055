"""Decoder kinds by name, as plain data: the one list the config's choices, the CLI, the model
card, the trainer and bundles read. Importing it never imports torch (the class is imported
when a decoder is built), so adding a decoder kind is one module plus one entry here."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Literal

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from .base import DecoderConfig


@dataclass(frozen=True)
class DecoderSpec:
    kind: str
    cls: str  # "module:Class" inside captioner.decoders, imported on first build
    input: Literal["pooled", "grid"]  # pooled (N, D) or grid (N, regions, D) features
    title: str  # the model card's heading
    help: str  # one line for --help and the web form
    class_evidence: bool = False  # can attend to the encoder's ImageNet class probabilities


DECODERS: dict[str, DecoderSpec] = {
    s.kind: s
    for s in (
        DecoderSpec(
            "show_and_tell",
            "show_and_tell:ShowAndTell",
            "pooled",
            "Show and Tell (CNN encoder -> LSTM decoder)",
            "pooled image features are the LSTM's first input",
        ),
        DecoderSpec(
            "attention",
            "attention:ShowAttendTell",
            "grid",
            "Show, Attend and Tell (soft attention over the CNN's grid)",
            "soft attention over the encoder's spatial grid, Show Attend and Tell",
            class_evidence=True,
        ),
    )
}


def decoder_spec(kind: str) -> DecoderSpec:
    try:
        return DECODERS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown decoder {kind!r}; this captioner knows "
            f"{', '.join(DECODERS)} (upgrade captioner?)"
        ) from None


def decoder_input(kind: str) -> str:
    """What a decoder kind reads: "pooled" (N, D) or "grid" (N, regions, D) features."""
    return decoder_spec(kind).input


def build_decoder(cfg: DecoderConfig) -> nn.Module:
    module, name = decoder_spec(cfg.kind).cls.split(":")
    return getattr(import_module(f"{__package__}.{module}"), name)(cfg)
