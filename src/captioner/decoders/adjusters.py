"""Score adjusters: small parts applied to the word scores at every search step, in the spirit
of Hugging Face's logits processors. The search loop knows none of them: it hands each the
step's log-probabilities (rows = hypotheses) and `seen`, the words each hypothesis already
holds, and ranks by what they return. Each one's per-image data is prepared before the search.

- RepetitionGuard: a content word the caption already holds loses `penalty` (an LSTM's classic
  failure: "a man and a man").
- WordBonus: words get a per-image bonus until the caption uses them. Its sources are guidance
  toward what the encoder's ImageNet head recognises (`class_bonus`: "cat" for a tabby) and
  toward the words of the most similar training photos' captions (`neighbour_bonus`); they are
  summed into one bonus (see pipeline.py).
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..data.vocab import Vocabulary
from .base import Decoder
from .neighbours import Neighbourhood

# Chosen on Flickr8k dev (model card): words fewer than 1 in 5 neighbours use lose guidance.
GUIDANCE_FLOOR = 0.2


class ScoreAdjuster(Protocol):
    def __call__(self, scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """scores (B*k, V) for the next word of every hypothesis (image i's k hypotheses are
        rows i*k .. i*k+k-1), seen (B*k, V) bool -> the adjusted scores."""

    def subset(self, images: torch.Tensor) -> ScoreAdjuster:
        """The adjuster for some of the images (indices into the batch)."""


class RepetitionGuard:
    def __init__(self, penalty: float, repeatable: torch.Tensor) -> None:
        """`repeatable`: a bool per vocabulary id, the words exempt (a, the, in, ...)."""
        self.penalty = penalty
        self.blocked = ~repeatable

    def subset(self, images: torch.Tensor) -> RepetitionGuard:
        return self  # the same for every image

    def __call__(self, scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        blocked = self.blocked.to(seen.device)
        return scores - self.penalty * (seen & blocked).float()


class WordBonus:
    def __init__(self, bonus: torch.Tensor) -> None:
        """`bonus` (B, V): added to each word's score, per image, until the caption holds it."""
        self.bonus = bonus
        self._rows: torch.Tensor | None = None

    def subset(self, images: torch.Tensor) -> WordBonus:
        return WordBonus(self.bonus[images.to(self.bonus.device)])

    def __call__(self, scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        if self._rows is None:  # one row per hypothesis, made once per search
            k = scores.shape[0] // self.bonus.shape[0]
            self._rows = self.bonus.to(scores.device).float().repeat_interleave(k, dim=0)
        return scores + self._rows.masked_fill(seen, 0.0)


class BannedWords:
    def __init__(self, banned: torch.Tensor) -> None:
        """`banned` (B, V) bool: words an image's captions may not use."""
        self.banned = banned
        self._rows: torch.Tensor | None = None

    def subset(self, images: torch.Tensor) -> BannedWords:
        return BannedWords(self.banned[images.to(self.banned.device)])

    def __call__(self, scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        if self._rows is None:
            k = scores.shape[0] // self.banned.shape[0]
            self._rows = self.banned.to(scores.device).repeat_interleave(k, dim=0)
        return scores.masked_fill(self._rows, float("-inf"))


# The tags the API shows beside a caption: top TAGS classes at >= TAG_FLOOR; a tag at
# >= CONFIDENT_TAG names what the photo shows.
TAGS, TAG_FLOOR, CONFIDENT_TAG = 5, 0.1, 0.5


def contradicting_words(
    model: Decoder, vocab: Vocabulary, features: torch.Tensor
) -> torch.Tensor | None:
    """(N, vocab) bool: words of an animal, vehicle or food group that no tag of the photo
    supports, when a confident tag names another group of the same kind (a zebra tagged 0.86
    must not be "a black and white dog"); None when no photo has such a tag."""
    from ..vision.class_words import class_names
    from ..vision.object_groups import GROUPS, KINDS_CHECKED, class_groups

    probs = model.class_probabilities(features)
    values, indices = probs.topk(TAGS, dim=-1)
    groups, names = class_groups(), class_names()
    out = torch.zeros(len(probs), len(vocab.itos), dtype=torch.bool)
    for i, (ps, cs) in enumerate(zip(values.tolist(), indices.tolist(), strict=True)):
        tags = [(names[c], p) for p, c in zip(ps, cs, strict=True) if p >= TAG_FLOOR]
        supported = {g for label, _ in tags for g in groups.get(label, ())}
        kinds = {
            GROUPS[g][0] for label, p in tags if p >= CONFIDENT_TAG for g in groups.get(label, ())
        }
        for g, (kind, words) in GROUPS.items():
            if kind in kinds & set(KINDS_CHECKED) and g not in supported:
                for w in words:
                    if w in vocab.stoi:
                        out[i, vocab.stoi[w]] = True
    return out if out.any() else None


def class_bonus(
    model: Decoder, vocab: Vocabulary, features: torch.Tensor, weight: float
) -> torch.Tensor:
    """(N, vocab) bonus for the words of the classes the model's frozen ImageNet head
    recognises: weight x summed class probability, at most weight."""
    from ..vision.classes import word_scores

    probs = model.class_probabilities(features)
    if probs is None:
        raise ValueError("class guidance needs a decoder with a class head")
    return weight * word_scores(probs, vocab.itos).clamp(max=1.0)


def neighbour_bonus(hood: Neighbourhood, weight: float, vocab: Vocabulary) -> torch.Tensor:
    """(N, vocab) guidance from each image's word presence: weight x (presence -
    GUIDANCE_FLOOR) for every token (those the neighbours never use, <end> included, start
    below zero)."""
    shares = hood.presence or []
    bonus = torch.full((len(shares), len(vocab.itos)), -weight * GUIDANCE_FLOOR)
    for i, share in enumerate(shares):
        for (word, n), p in share.items():
            if n == 1 and word in vocab.stoi:
                bonus[i, vocab.stoi[word]] += weight * p
    return bonus
