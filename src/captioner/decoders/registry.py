"""Decoder kinds by name: a bundle's ``model.kind`` picks the class that reads its weights."""

from __future__ import annotations

from torch import nn

from ..core.errors import ConfigError
from .base import DecoderConfig
from .show_and_tell import ShowAndTell

DECODERS: dict[str, type[nn.Module]] = {ShowAndTell.kind: ShowAndTell}


def build_decoder(cfg: DecoderConfig) -> nn.Module:
    try:
        cls = DECODERS[cfg.kind]
    except KeyError:
        raise ConfigError(
            f"unknown decoder {cfg.kind!r}; this captioner knows "
            f"{', '.join(DECODERS)} (upgrade captioner?)"
        ) from None
    return cls(cfg)
