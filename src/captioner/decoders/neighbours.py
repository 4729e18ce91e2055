"""The training photos a model was trained on, as an index (Devlin et al., 2015; Mao et al.,
2015): the photos that look most like a new one, and the words people used for them.

An image's *neighbourhood* is its k most similar training photos (cosine similarity of
PCA-reduced pooled CNN features) and each word's *presence*: the share of those photos whose
captions use it (n times, for its n-th use). Decoding reads it twice (decoders/adjusters.py:
guidance toward those words; decoders/rerankers.py: consensus reranking against those captions),
so it is looked up once per batch.

The index is data, not code: the PCA basis and the neighbours' unit vectors (safetensors) and
their captions (JSON) travel in the model bundle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..data.cider import CiderD
from ..data.vocab import tokenize

INDEX_DIMS = 128  # PCA dimensions: 1.5 MB of fp16 for Flickr8k's 6,000 photos, same neighbours

Presence = dict[tuple[str, int], float]  # (word, n) -> share of the neighbours using it n times


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
        """CIDEr-D against the indexed photos' captions (the consensus reranker's scorer)."""
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

    def presence(self, near: np.ndarray) -> list[Presence]:
        """For each row of neighbour indices (N, k): {(word, n): share of those photos with a
        caption that uses the word at least n times}."""
        out = []
        for row in near:
            share: Presence = {}
            for j in row:
                for word, most in self._most_uses[j].items():
                    for n in range(1, most + 1):
                        share[(word, n)] = share.get((word, n), 0.0) + 1.0 / len(row)
            out.append(share)
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "basis": self.basis, "vectors": self.vectors}

    def lookup(self, features: torch.Tensor, k: int, presence: bool) -> Neighbourhood:
        """The k nearest training photos of each image, with their words' presence when asked
        (one lookup per batch serves guidance and reranking)."""
        near = self.nearest(features, k)
        return Neighbourhood(self, near, self.presence(near) if presence else None)


@dataclass(frozen=True)
class Neighbourhood:
    """One batch's neighbours: `near` (N, k) rows of the index, and each image's word presence
    (None when nothing asked for it)."""

    index: NeighbourIndex
    near: np.ndarray
    presence: list[Presence] | None

    def subset(self, images: torch.Tensor) -> Neighbourhood:
        """The neighbourhood of some of the batch's images."""
        rows = images.cpu().numpy()
        presence = None if self.presence is None else [self.presence[i] for i in rows]
        return Neighbourhood(self.index, self.near[rows], presence)
