"""Consensus reranking (Devlin et al., 2015; Mao et al., 2015): of the beam's finished
captions, prefer the one that agrees most with how people described the training photos that
look most like this one.

The beam's own ranking favours safe, generic phrases ("in front of a building") that the
references rarely use; the captions of visually similar training photos say which words people
actually use for such a scene. Each hypothesis is scored by its mean CIDEr-D against the captions
of the k nearest training photos (cosine similarity of PCA-reduced pooled CNN features), plus
`weight` x the model's own log-probability per word, and the beam is reordered by that score.
On Flickr8k dev this raises CIDEr-D and BLEU-4, and it helps on the COCO sets too (model card).

The same neighbours also say which words a caption of this photo is likely to contain: a word's
*presence* is the share of the neighbours whose captions use it (n times, for its n-th use).
Two optional uses, both chosen on Flickr8k dev:
- guidance: before the search, each word's log-probability gets weight x (presence - 0.2) until
  the caption uses it, so the beam holds captions in the neighbours' words (as class guidance
  does with the encoder's ImageNet classes);
- precision: in the reranking, each word of a caption earns weight x (presence - 0.6), so words
  the neighbours rarely use (generic tails like "in front of a building") cost the caption.

The index is data, not code: the PCA basis and the neighbours' unit vectors (safetensors) and
their captions (JSON) travel in the model bundle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.cider import CiderD
from ..data.vocab import Vocabulary, tokenize

if TYPE_CHECKING:
    from .search import Hypothesis

INDEX_DIMS = 128  # PCA dimensions: 1.5 MB of fp16 for Flickr8k's 6,000 photos, same neighbours
# Chosen on Flickr8k dev (model card): words fewer than 1 in 5 neighbours use lose guidance, and
# a word must be used by 3 in 5 neighbours to pay its way in the reranking.
GUIDANCE_FLOOR = 0.2
BREAK_EVEN = 0.6


def pooled(features: torch.Tensor) -> torch.Tensor:
    """One vector per image: the mean over a feature grid's regions (N, R, D), or the pooled
    features themselves (N, D)."""
    features = features.float()
    return features.mean(dim=1) if features.dim() == 3 else features


class NeighbourIndex:
    """Training photos as unit vectors in a PCA space, with their reference captions."""

    def __init__(
        self,
        mean: torch.Tensor,
        basis: torch.Tensor,
        vectors: torch.Tensor,
        captions: Sequence[Sequence[str]],
    ) -> None:
        if vectors.dim() != 2 or basis.dim() != 2 or mean.dim() != 1:
            raise ValueError("neighbour index: mean (D,), basis (D, d) and vectors (M, d)")
        if basis.shape[0] != mean.shape[0] or vectors.shape[1] != basis.shape[1]:
            raise ValueError(
                f"neighbour index: shapes do not fit: mean {tuple(mean.shape)}, basis "
                f"{tuple(basis.shape)}, vectors {tuple(vectors.shape)}"
            )
        if len(captions) != vectors.shape[0] or not all(captions):
            raise ValueError(
                f"neighbour index: {vectors.shape[0]} photos but {len(captions)} caption "
                "sets (every photo needs at least one caption)"
            )
        self.mean, self.basis = mean.float(), basis.float()
        self.vectors = vectors.to(torch.float16)  # as stored
        self._unit = self.vectors.float()  # searched: converted once, not per query
        self.captions = [list(c) for c in captions]

    @classmethod
    def build(
        cls,
        pooled_features: torch.Tensor,
        captions: Sequence[Sequence[str]],
        dims: int = INDEX_DIMS,
    ) -> NeighbourIndex:
        """Index training photos from their pooled features (M, D) and reference captions."""
        x = pooled_features.float()
        mean = x.mean(dim=0)
        dims = min(dims, x.shape[0], x.shape[1])
        # SVD of the centred features: the top right-singular vectors are the PCA basis.
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        basis = vh[:dims].T.contiguous()
        vectors = torch.nn.functional.normalize((x - mean) @ basis, dim=1)
        return cls(mean, basis, vectors, captions)

    def project(self, pooled_features: torch.Tensor) -> torch.Tensor:
        z = (pooled_features.float().cpu() - self.mean) @ self.basis
        return torch.nn.functional.normalize(z, dim=1)

    def nearest(self, features: torch.Tensor, k: int) -> np.ndarray:
        """Indices (N, k) of the k most similar training photos, most similar first
        (`features`: pooled (N, D) or a grid (N, R, D))."""
        sims = self.project(pooled(features)) @ self._unit.T
        return sims.topk(min(k, sims.shape[1]), dim=1).indices.numpy()

    @cached_property
    def cider(self) -> CiderD:
        # Built on first use (about 1.5 s for Flickr8k): df over all the indexed captions.
        return CiderD([[tokenize(c) for c in caps] for caps in self.captions])

    @cached_property
    def _most_uses(self) -> list[Counter]:
        # Per indexed photo: the most times any one of its captions uses each word.
        out = []
        for caps in self.captions:
            most: Counter = Counter()
            for c in caps:
                for word, n in Counter(tokenize(c)).items():
                    most[word] = max(most[word], n)
            out.append(most)
        return out

    def presence(self, near: np.ndarray) -> list[dict[tuple[str, int], float]]:
        """For each row of neighbour indices (N, k): {(word, n): share of those photos with a
        caption that uses the word at least n times}."""
        out = []
        for row in near:
            share: dict[tuple[str, int], float] = {}
            for j in row:
                for word, most in self._most_uses[j].items():
                    for n in range(1, most + 1):
                        share[(word, n)] = share.get((word, n), 0.0) + 1.0 / len(row)
            out.append(share)
        return out

    def word_bonus(
        self, shares: Sequence[dict[tuple[str, int], float]], weight: float, vocab: Vocabulary
    ) -> torch.Tensor:
        """(N, vocab) guidance from each photo's `presence`: weight x (presence -
        GUIDANCE_FLOOR) for every token (those the neighbours never use, <end> included, start
        below zero)."""
        bonus = torch.full((len(shares), len(vocab.itos)), -weight * GUIDANCE_FLOOR)
        for i, share in enumerate(shares):
            for (word, n), p in share.items():
                if n == 1 and word in vocab.stoi:
                    bonus[i, vocab.stoi[word]] += weight * p
        return bonus

    def rerank(
        self,
        found: list[list[Hypothesis]],
        near: np.ndarray,
        weight: float,
        vocab: Vocabulary,
        precision: float = 0.0,
        shares: Sequence[dict[tuple[str, int], float]] | None = None,
    ) -> list[list[Hypothesis]]:
        """Each image's hypotheses reordered by consensus with its neighbours (`near`, rows of
        `nearest`) + weight x log-probability per word + precision x the words' presence less
        BREAK_EVEN (`shares`, computed here when not given; stable: ties keep the beam's order)."""
        words = [[vocab.itos[i] for i in h.ids] for hyps in found for h in hyps]
        owner = np.repeat(np.arange(len(found)), [len(h) for h in found])
        agreement = self.cider.consensus(words, near[owner]) if words else np.zeros(0)
        if not precision:
            shares = [{}] * len(found)
        elif shares is None:
            shares = self.presence(near)
        out, at = [], 0
        for hyps, share in zip(found, shares, strict=True):
            scores = [
                float(agreement[at + j])
                + weight * h.logprob / (len(h.ids) + 1)
                + (precision * _expected_matches(words[at + j], share) if precision else 0.0)
                for j, h in enumerate(hyps)
            ]
            order = sorted(range(len(hyps)), key=lambda j: -scores[j])
            out.append([hyps[j] for j in order])
            at += len(hyps)
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "basis": self.basis, "vectors": self.vectors}


def _expected_matches(words: Sequence[str], share: dict[tuple[str, int], float]) -> float:
    """Sum over the caption's words of (presence of its n-th use - BREAK_EVEN)."""
    used: Counter = Counter()
    total = 0.0
    for word in words:
        used[word] += 1
        total += share.get((word, used[word]), 0.0) - BREAK_EVEN
    return total
