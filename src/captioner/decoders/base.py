"""The one interface every caption decoder offers, so the trainer, beam search, bundles and the
API never ask which decoder they hold.

A decoder maps image features to word log-probabilities one step at a time. Its recurrent
state is opaque to the search: the decoder itself repeats it per beam and selects rows of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

State = Any  # whatever a decoder carries between steps (e.g. an LSTM's (h, c))


class DecoderConfig(BaseModel):
    """Architecture of a decoder, saved in the bundle's config.json ``model`` block."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "show_and_tell"  # a key of decoders.registry.DECODERS
    feature_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=4)
    embed_size: int = Field(512, gt=0)
    hidden_size: int = Field(512, gt=0)
    num_layers: int = Field(1, ge=1, le=4)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    attention_size: int = Field(512, gt=0)  # attention decoder only
    num_classes: int = Field(0, ge=0)  # >0: the decoder uses the encoder's ImageNet head


class Decoder(Protocol):
    cfg: DecoderConfig

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens (B, T) from <start> -> logits (B, T, V)."""

    def init_state(self, features: torch.Tensor) -> State:
        """The state after seeing the image, ready for <start>."""

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (N,) -> log-probabilities (N, V) and the next state."""

    def repeat_state(self, state: State, k: int) -> State:
        """Each image's state repeated k times (row i -> rows i*k .. i*k+k-1)."""

    def select_state(self, state: State, rows: torch.Tensor) -> State:
        """The state of the given rows, in that order (beams kept by the search). Each row
        must come from its own image's block of k rows, as in beam search: per-image parts of
        the state (e.g. attention's regions) are then shared, not copied."""

    def class_probabilities(self, features: torch.Tensor) -> torch.Tensor | None:
        """(N, num_classes) probabilities of the encoder's ImageNet head for these features,
        or None when the decoder carries no class head (class guidance then cannot apply)."""


@dataclass(frozen=True)
class Hypothesis:
    """One searched caption: token ids (no <start>/<end>) and the model's summed
    log-probability of them plus <end> (without any score adjuster's changes)."""

    ids: list[int]
    logprob: float

    @property
    def confidence(self) -> float:
        """Geometric mean of the per-token probabilities (words and <end>), in (0, 1]."""
        return math.exp(self.logprob / (len(self.ids) + 1))
