"""Decoder kinds by name: a bundle's ``model.kind`` picks the class that reads its weights."""

from __future__ import annotations

from torch import nn

from ..core.errors import ConfigError
from .attention import ShowAttendTell
from .base import DecoderConfig
from .show_and_tell import ShowAndTell

DECODERS: dict[str, type[nn.Module]] = {
    ShowAndTell.kind: ShowAndTell,
    ShowAttendTell.kind: ShowAttendTell,
}


def decoder_input(kind: str) -> str:
    """What a decoder kind reads: "pooled" (N, D) or "grid" (N, regions, D) features."""
    return getattr(DECODERS.get(kind), "input", "pooled")


def build_decoder(cfg: DecoderConfig) -> nn.Module:
    try:
        cls = DECODERS[cfg.kind]
    except KeyError:
        raise ConfigError(
            f"unknown decoder {cfg.kind!r}; this captioner knows "
            f"{', '.join(DECODERS)} (upgrade captioner?)"
        ) from None
    return cls(cfg)
