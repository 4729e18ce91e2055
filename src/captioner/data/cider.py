"""Fast CIDEr-D with document frequencies computed once, for self-critical (SCST) rewards.

The numbers are pycocoevalcap's `cider_scorer.py` (n-grams 1..4; tf-idf weights
tf * (log(#images) - log(max(1, df))); cosine similarity per n-gram order with the candidate's
weights clipped by the reference's; the Gaussian length penalty with sigma 6, where "length" is
the number of bigrams, as in that code; mean over the references and over n; x10). What
differs is when the work is done: pycocoevalcap recomputes the df table and every reference's
vector on each call, from the references of the images in that call. `CiderD` computes both
once for a fixed reference corpus (e.g. the training captions), so scoring a batch of sampled
captions only counts the candidates' n-grams and looks the references up.

Corpus mode (`corpus_score`, df from the same references, one candidate per image) gives
pycocoevalcap's `Cider().compute_score` to ~1e-12.

Tokens: any hashable tokens, the same kind for references and candidates -- words from
`captioner.data.vocab.tokenize` (lower-case words, punctuation dropped; the official PTB
tokenizer splits a few things differently, e.g. "don't"), or vocabulary ids for SCST, with
<start>/<end>/<pad> removed by the caller (see `until_end`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from itertools import chain, repeat

import numpy as np

from ..core.errors import ScoringError

try:  # CPython's C helper behind Counter(iterable)
    from collections import _count_elements
except ImportError:  # pragma: no cover - other Pythons

    def _count_elements(mapping: dict, iterable: Iterable) -> None:
        for x in iterable:
            mapping[x] = mapping.get(x, 0) + 1


Tokens = Sequence[Hashable]


def _as_list(tokens: Iterable[Hashable]) -> list:
    # numpy arrays and torch tensors become plain ints (hash-equal to the ints of the refs).
    return tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)


def ngram_counts(tokens: Tokens, n: int = 4) -> dict[tuple, int]:
    """Counts of every 1..n-gram of one token sequence (the n-gram is a tuple of tokens)."""
    words = _as_list(tokens)
    shifted = [words[i:] for i in range(n)]
    counts: dict[tuple, int] = {}
    for k in range(1, n + 1):
        # zip over shifted copies builds the k-grams and _count_elements counts them, in C
        # (3x faster than a Python loop; this is most of the time of CiderD.score).
        _count_elements(counts, zip(*shifted[:k], strict=False))
    return counts


def until_end(rows: Iterable[Iterable[int]], end_id: int, pad_id: int = 0) -> list[list[int]]:
    """Token-id rows (e.g. sampled captions, without <start>) cut at the first <end>, pads
    dropped: what `CiderD` expects when it is given vocabulary ids."""
    out = []
    for row in rows:
        ids = []
        for t in _as_list(row):
            if t == end_id:
                break
            if t != pad_id:
                ids.append(t)
        out.append(ids)
    return out


class CiderD:
    """CIDEr-D against a fixed reference corpus, with df and reference vectors precomputed.

    references[i] holds image i's reference captions, each a token sequence. The df table
    (in how many images' reference sets each n-gram occurs) and log(len(references)) come
    from these references, as in pycocoevalcap's corpus mode over the same images.

        cider = CiderD(train_refs)                   # once: ~20k references/s
        rewards = cider.score(sampled, image_index)  # per batch: (N,) float64
    """

    def __init__(
        self, references: Sequence[Sequence[Tokens]], n: int = 4, sigma: float = 6.0
    ) -> None:
        if not references:
            raise ScoringError("CiderD needs at least one image's references")
        self.n, self.sigma = n, float(sigma)
        self.num_images = len(references)
        self.log_images = float(np.log(float(self.num_images)))

        # One pass over the images: give each new n-gram an id, keep every reference's
        # n-grams as compact arrays (a dict per reference would need ~10x the memory on COCO),
        # and each image's distinct n-grams for df (an n-gram counts once per image).
        self._ids: dict[tuple, int] = {}
        ids = self._ids
        gid_parts, order_parts, tf_parts, image_parts, sizes = [], [], [], [], []
        ref_start = np.zeros(self.num_images + 1, dtype=np.int64)
        for i, refs in enumerate(references):
            if len(refs) == 0:
                raise ScoringError(f"image {i} has no references; every image needs at least one")
            counts = [ngram_counts(ref, n) for ref in refs]
            for g in chain.from_iterable(counts):
                if g not in ids:
                    ids[g] = len(ids)
            _, gids, orders, tfs = self._flatten(counts)
            gid_parts.append(gids.astype(np.int32))
            order_parts.append(orders.astype(np.int8))
            tf_parts.append(tfs.astype(np.float32))  # small integer counts: exact
            image_parts.append(np.unique(gid_parts[-1]))
            sizes.extend(map(len, counts))
            ref_start[i + 1] = len(sizes)
        self._num_ngrams = len(self._ids)
        self._df = np.bincount(np.concatenate(image_parts), minlength=self._num_ngrams)
        self._ref_start = ref_start
        # idf weight of every known n-gram: log(#images) - log(max(1, df)).
        self._idf = self.log_images - np.log(np.maximum(self._df.astype(np.float64), 1.0))
        self._idf_or_unseen = np.append(self._idf, self.log_images)

        # Every reference's tf-idf vector as sorted (ref * G + gid) keys -> weights, plus
        # per-order norms and bigram counts ("length", as pycocoevalcap measures it).
        num_refs = len(sizes)
        owner = np.repeat(np.arange(num_refs, dtype=np.int64), sizes)
        gids = np.concatenate(gid_parts).astype(np.int64)
        orders = np.concatenate(order_parts).astype(np.int64)
        tfs = np.concatenate(tf_parts).astype(np.float64)
        del gid_parts, order_parts, tf_parts, image_parts
        weights = tfs * self._idf[gids]
        self._ref_norms = np.sqrt(
            np.bincount(owner * n + orders, weights=weights * weights, minlength=num_refs * n)
        ).reshape(num_refs, n)
        self._ref_lengths = np.bincount(
            owner, weights=np.where(orders == 1, tfs, 0.0), minlength=num_refs
        )
        key = owner * self._num_ngrams + gids
        sort = np.argsort(key)
        self._keys, self._weights = key[sort], weights[sort]
        self.num_references = num_refs

    def _flatten(
        self, counts: Sequence[dict[tuple, int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every distinct n-gram of each count table as flat arrays: owner (index into
        counts), global n-gram id (-1 when unseen in the references), order (0-based), tf."""
        get = self._ids.get
        sizes = np.fromiter(map(len, counts), np.int64, len(counts))
        total = int(sizes.sum())
        grams = list(chain.from_iterable(counts))
        owner = np.repeat(np.arange(len(counts), dtype=np.int64), sizes)
        gids = np.fromiter(map(get, grams, repeat(-1)), np.int64, total)
        orders = np.fromiter(map(len, grams), np.int64, total) - 1
        tfs = np.fromiter(chain.from_iterable(c.values() for c in counts), np.float64, total)
        return owner, gids, orders, tfs

    def df(self, ngram: Sequence[Hashable]) -> int:
        """Document frequency of one n-gram (0 when unseen)."""
        gid = self._ids.get(tuple(_as_list(ngram)))
        return 0 if gid is None else int(self._df[gid])

    def score(self, candidates: Sequence[Tokens], refs_index: Sequence[int]) -> np.ndarray:
        """CIDEr-D of candidates[j] against the references of image refs_index[j]: (N,)."""
        refs_index = np.asarray(refs_index, dtype=np.int64).reshape(-1)
        if len(candidates) != len(refs_index):
            raise ScoringError(
                f"{len(candidates)} candidates but {len(refs_index)} reference indices"
            )
        return self._pairs(candidates, np.arange(len(candidates)), refs_index)

    def consensus(self, candidates: Sequence[Tokens], images: np.ndarray) -> np.ndarray:
        """Mean CIDEr-D of candidates[j] against the references of each image in images[j]
        ((N, k) indices), counting each candidate's n-grams once: (N,)."""
        images = np.asarray(images, dtype=np.int64).reshape(len(candidates), -1)
        k = images.shape[1]
        pairs = self._pairs(candidates, np.repeat(np.arange(len(candidates)), k), images.ravel())
        return pairs.reshape(-1, k).mean(axis=1) if k else np.zeros(len(candidates))

    def _pairs(
        self, candidates: Sequence[Tokens], which: np.ndarray, refs_index: np.ndarray
    ) -> np.ndarray:
        """CIDEr-D of candidates[which[p]] against the references of image refs_index[p]."""
        num = len(which)
        if num == 0:
            return np.zeros(0, dtype=np.float64)
        if refs_index.min() < 0 or refs_index.max() >= self.num_images:
            raise ScoringError(
                f"reference index out of range 0..{self.num_images - 1}: "
                f"{int(refs_index.min())}..{int(refs_index.max())}"
            )
        n = self.n
        # The candidates' distinct n-grams, flattened (each candidate once, however many
        # pairs it is in).
        owner_c, gid_c, order_c, tf = self._flatten([ngram_counts(c, n) for c in candidates])
        n_cand = len(candidates)
        lengths = np.bincount(owner_c, weights=np.where(order_c == 1, tf, 0.0), minlength=n_cand)
        # Unseen n-grams have df 0 -> idf log(#images), as pycocoevalcap's log(max(1, 0)).
        wc = tf * self._idf_or_unseen[gid_c]  # gid -1 picks the last entry
        cand_norms = np.sqrt(
            np.bincount(owner_c * n + order_c, weights=wc * wc, minlength=n_cand * n)
        ).reshape(n_cand, n)
        lengths, cand_norms = lengths[which], cand_norms[which]

        # Each pair's copy of its candidate's known n-grams.
        known = gid_c >= 0
        k_owner, k_order, k_gid, k_w = owner_c[known], order_c[known], gid_c[known], wc[known]
        per_cand = np.bincount(k_owner, minlength=n_cand)
        cand_start = np.cumsum(per_cand) - per_cand
        count = per_cand[which]
        a_entry = np.repeat(cand_start[which] - np.cumsum(count) + count, count) + np.arange(
            int(count.sum())
        )
        owner_a = np.repeat(np.arange(num), count)
        e_owner, e_order, e_gid, e_w = owner_a, k_order[a_entry], k_gid[a_entry], k_w[a_entry]

        # Pair every known candidate n-gram with every reference of its image.
        first = self._ref_start[refs_index]
        nrefs = self._ref_start[refs_index + 1] - first
        max_refs = int(nrefs.max())
        reps = nrefs[e_owner]
        p_entry = np.repeat(np.arange(len(e_owner)), reps)
        starts = np.cumsum(reps) - reps
        p_local = np.arange(len(p_entry)) - np.repeat(starts, reps)  # which ref of the image
        p_owner = e_owner[p_entry]
        p_ref = first[p_owner] + p_local
        key = p_ref * self._num_ngrams + e_gid[p_entry]
        if len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, key), len(self._keys) - 1)
            wr = np.where(self._keys[pos] == key, self._weights[pos], 0.0)
        else:  # every reference is empty
            wr = np.zeros(len(key))
        wcp = e_w[p_entry]
        contrib = np.minimum(wcp, wr) * wr
        flat = (p_owner * max_refs + p_local) * n + e_order[p_entry]
        val = np.bincount(flat, weights=contrib, minlength=num * max_refs * n).reshape(
            num, max_refs, n
        )

        # Cosine (only where both norms are non-zero), length penalty, masks for short sets.
        local = np.arange(max_refs)
        valid = local[None, :] < nrefs[:, None]
        ref_ids = np.where(valid, first[:, None] + local[None, :], 0)
        rn = self._ref_norms[ref_ids]  # (N, R, n)
        denom = cand_norms[:, None, :] * rn
        val = np.where(denom != 0, val / np.where(denom != 0, denom, 1.0), val)
        delta = lengths[:, None] - self._ref_lengths[ref_ids]
        val *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, :, None]
        val *= valid[:, :, None]
        return val.sum(axis=1).mean(axis=1) / nrefs * 10.0

    def corpus_score(self, candidates: Sequence[Tokens]) -> tuple[float, np.ndarray]:
        """One candidate per image, in the references' order: (mean, per-image scores), as
        pycocoevalcap's `Cider().compute_score` returns them for the same images."""
        if len(candidates) != self.num_images:
            raise ScoringError(
                f"corpus_score needs one candidate per image: got {len(candidates)} for "
                f"{self.num_images} images"
            )
        scores = self.score(candidates, np.arange(self.num_images))
        return float(scores.mean()), scores
