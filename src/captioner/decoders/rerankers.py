"""Rerankers: small parts that reorder each image's finished hypotheses after the search.

ConsensusReranker (Devlin et al., 2015; Mao et al., 2015): the beam's own ranking favours safe,
generic phrases ("in front of a building") that references rarely use; the captions of visually
similar training photos say which words people actually use for such a scene. Each hypothesis
is scored by its mean CIDEr-D against the captions of the image's nearest training photos, plus
`weight` x the model's own log-probability per word, plus `precision` x each word's presence
among those photos less BREAK_EVEN (words they rarely use cost the caption).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..data.vocab import Vocabulary
from .base import Hypothesis
from .neighbours import Neighbourhood, Presence

# Chosen on Flickr8k dev (model card): a word must be used by 3 in 5 neighbours to pay its way.
BREAK_EVEN = 0.6


class Reranker(Protocol):
    def __call__(self, found: list[list[Hypothesis]]) -> list[list[Hypothesis]]:
        """Each image's hypotheses (best first) -> the same hypotheses in a new order."""


class ConsensusReranker:
    def __init__(
        self,
        hood: Neighbourhood,
        vocab: Vocabulary,
        *,
        weight: float,
        precision: float = 0.0,
    ) -> None:
        if precision and hood.presence is None:
            raise ValueError("the precision term needs the neighbourhood's word presence")
        self.hood, self.vocab, self.weight, self.precision = hood, vocab, weight, precision

    def __call__(self, found: list[list[Hypothesis]]) -> list[list[Hypothesis]]:
        """Stable: ties keep the beam's order."""
        itos = self.vocab.itos
        words = [[itos[i] for i in h.ids] for hyps in found for h in hyps]
        owner = np.repeat(np.arange(len(found)), [len(h) for h in found])
        index = self.hood.index
        agreement = index.cider.consensus(words, self.hood.near[owner]) if words else np.zeros(0)
        shares = self.hood.presence if self.precision else [{}] * len(found)
        out, at = [], 0
        for hyps, share in zip(found, shares, strict=True):
            scores = [
                float(agreement[at + j])
                + self.weight * h.logprob / (len(h.ids) + 1)
                + (self._precision_term(words[at + j], share) if self.precision else 0.0)
                for j, h in enumerate(hyps)
            ]
            order = sorted(range(len(hyps)), key=lambda j: -scores[j])
            out.append([hyps[j] for j in order])
            at += len(hyps)
        return out

    def _precision_term(self, words: Sequence[str], share: Presence) -> float:
        return self.precision * expected_matches(words, share)


def expected_matches(words: Sequence[str], share: Presence) -> float:
    """Sum over the caption's words of (presence of its n-th use - BREAK_EVEN)."""
    used: Counter = Counter()
    total = 0.0
    for word in words:
        used[word] += 1
        total += share.get((word, used[word]), 0.0) - BREAK_EVEN
    return total
