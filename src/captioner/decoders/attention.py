"""Show, Attend and Tell (Xu et al., 2015): soft attention over the encoder's spatial grid.

At every word the LSTM looks at a weighted mix of the image regions, chosen by its own state,
so an object can be named where it is seen rather than from one pooled vector. Optionally the
encoder's ImageNet classifier (kept frozen inside the decoder) adds what the CNN recognises as
one more "region" to attend to and to the initial state: the class evidence gets its own
pathway instead of being mixed into the pooled features (which measurably did not help).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DecoderConfig

# (h, c, values, keys): LSTM state (k rows per image) plus the projected regions every step
# attends over (one row per image).
AttnState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class ShowAttendTell(nn.Module):
    """Reads grid features (N, regions, feature_dim); see decoders.registry."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, e, a = cfg.feature_dim, cfg.hidden_size, cfg.embed_size, cfg.attention_size
        self.feature_norm = nn.LayerNorm(d)
        self.values = nn.Linear(d, h)  # regions into the decoder's space
        self.keys = nn.Linear(h, a)
        self.query = nn.Linear(h, a)
        self.score = nn.Linear(a, 1)
        self.gate = nn.Linear(h, h)  # how much the context counts at this word (SAT's beta)
        self.init_h = nn.Linear(h, h)
        self.init_c = nn.Linear(h, h)
        self.embed = nn.Embedding(cfg.vocab_size, e, padding_idx=0)
        self.cell = nn.LSTMCell(e + h, h)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, cfg.vocab_size)
        if cfg.num_classes:
            # The encoder's own ImageNet head, frozen; its weights travel in the bundle.
            self.register_buffer("class_weight", torch.zeros(cfg.num_classes, d))
            self.register_buffer("class_bias", torch.zeros(cfg.num_classes))
            self.classes = nn.Sequential(nn.Linear(cfg.num_classes, h), nn.Tanh())

    def set_class_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.class_weight.copy_(weight)
        self.class_bias.copy_(bias)

    def class_probabilities(self, features: torch.Tensor) -> torch.Tensor | None:
        if not self.cfg.num_classes:
            return None
        pooled = features.float().mean(dim=1)
        return torch.softmax(pooled @ self.class_weight.T + self.class_bias, dim=-1)

    def init_state(self, features: torch.Tensor) -> AttnState:
        values = self.dropout(self.values(self.feature_norm(features.float())))
        if self.cfg.num_classes:
            evidence = self.classes(self.class_probabilities(features))
            values = torch.cat([values, evidence.unsqueeze(1)], dim=1)
        mean = values.mean(dim=1)
        return (
            torch.tanh(self.init_h(mean)),
            torch.tanh(self.init_c(mean)),
            values,
            self.keys(values),
        )

    def step(self, tokens: torch.Tensor, state: AttnState) -> tuple[torch.Tensor, AttnState]:
        state = self._advance(tokens, state)
        return torch.log_softmax(self.out(self.dropout(state[0])).float(), dim=-1), state

    def _advance(self, tokens: torch.Tensor, state: AttnState) -> AttnState:
        """Attend with the current state, then feed the word and the context to the LSTM.
        h and c have k rows per image (beams or samples); the regions are kept once per image
        and broadcast, so beam search never copies them."""
        h, c, values, keys = state
        n, k = values.shape[0], h.shape[0] // values.shape[0]
        query = self.query(h).view(n, k, 1, -1)
        scores = self.score(torch.tanh(keys.unsqueeze(1) + query)).squeeze(-1)  # (n, k, R)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, values).view(n * k, -1)  # weighted mix of the regions
        context = torch.sigmoid(self.gate(h)) * context
        x = torch.cat([self.dropout(self.embed(tokens)), context], dim=-1)
        h, c = self.cell(x, (h, c))
        return h, c, values, keys

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens (B, T) from <start> -> logits (B, T, V); position t
        predicts tokens[:, t + 1]. All hidden states go to the vocabulary at once (faster)."""
        state = self.init_state(features)
        hiddens = []
        for t in range(tokens.shape[1]):
            state = self._advance(tokens[:, t], state)
            hiddens.append(state[0])
        return self.out(self.dropout(torch.stack(hiddens, dim=1)))

    def repeat_state(self, state: AttnState, k: int) -> AttnState:
        h, c, values, keys = state
        return h.repeat_interleave(k, dim=0), c.repeat_interleave(k, dim=0), values, keys

    def select_state(self, state: AttnState, rows: torch.Tensor) -> AttnState:
        h, c, values, keys = state
        return h[rows], c[rows], values, keys
