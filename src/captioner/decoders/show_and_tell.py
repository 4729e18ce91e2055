"""Show and Tell (Vinyals et al., 2015): image features are the LSTM's first input."""

from __future__ import annotations

import torch
from torch import nn

from .base import DecoderConfig

LSTMState = tuple[torch.Tensor, torch.Tensor]


class ShowAndTell(nn.Module):
    """Reads pooled features (N, feature_dim); see decoders.registry."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Normalising the frozen CNN's features keeps the first LSTM input on the same scale as
        # word embeddings, which trains faster and more stably than a bare projection.
        self.feature_norm = nn.LayerNorm(cfg.feature_dim)
        self.project = nn.Linear(cfg.feature_dim, cfg.embed_size)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size, padding_idx=0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(
            cfg.embed_size,
            cfg.hidden_size,
            cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.out = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def image_input(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(self.feature_norm(features.float())))

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. tokens: (B, T) starting with <start>; returns logits (B, T, V)
        where position t predicts tokens[:, t + 1] (the last predicts what follows)."""
        x = torch.cat(
            [self.image_input(features).unsqueeze(1), self.dropout(self.embed(tokens))], dim=1
        )
        hidden, _ = self.lstm(x)
        return self.out(self.dropout(hidden[:, 1:]))

    def init_state(self, features: torch.Tensor) -> LSTMState:
        """Feed the image; returns the LSTM state ready for <start>."""
        _, state = self.lstm(self.image_input(features).unsqueeze(1))
        return state

    def step(self, tokens: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """One decoding step: tokens (N,) -> log-probabilities (N, V) and the new state."""
        hidden, state = self.lstm(self.embed(tokens).unsqueeze(1), state)
        return torch.log_softmax(self.out(hidden[:, 0]).float(), dim=-1), state

    def repeat_state(self, state: LSTMState, k: int) -> LSTMState:
        return state[0].repeat_interleave(k, dim=1), state[1].repeat_interleave(k, dim=1)

    def select_state(self, state: LSTMState, rows: torch.Tensor) -> LSTMState:
        return state[0][:, rows], state[1][:, rows]

    def class_probabilities(self, features: torch.Tensor) -> None:
        return None  # no class head
