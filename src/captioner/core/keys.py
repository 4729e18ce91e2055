"""Prefixed tensor names: one state dict in a checkpoint holds the decoder's weights, the
fine-tuned encoder's (ENCODER) and the running mean of recent epochs (AVERAGE)."""

from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")

ENCODER = "encoder."
AVERAGE = "average."


def prefixed(prefix: str, tensors: dict[str, V]) -> dict[str, V]:
    return {prefix + k: v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, V]) -> dict[str, V]:
    """The entries under `prefix`, with it removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def unowned(tensors: dict[str, V]) -> dict[str, V]:
    """The decoder's own entries: none under ENCODER or AVERAGE."""
    return {k: v for k, v in tensors.items() if not k.startswith((ENCODER, AVERAGE))}
