"""Decoding as a pipeline: the one place a DecodeConfig becomes search steps.

`for_decoding` picks the decoder and vocabulary (grown by the classifier's words with
open_vocabulary). Then, for each batch: look up the neighbours once (when anything reads them),
build the score adjusters (repetition guard, one word bonus summing class and neighbour guidance,
banned words that contradict a confident tag), run the search, then the rerankers (consensus);
with class_constraint, the photos whose best caption lacks a required word are searched again
under that constraint. The model's optional capabilities are explicit: its class head
(`Decoder.class_probabilities`) and the bundle's neighbour index, passed in. A setting that needs
a capability the model lacks is a ConfigError, never silently ignored.
"""

from __future__ import annotations

import weakref

import torch

from ..core.errors import ConfigError
from ..data.vocab import Vocabulary
from .adjusters import (
    BannedWords,
    RepetitionGuard,
    ScoreAdjuster,
    WordBonus,
    class_bonus,
    contradicting_words,
    neighbour_bonus,
)
from .base import Decoder, Hypothesis
from .neighbours import Neighbourhood, NeighbourIndex
from .open_vocab import open_vocabulary
from .rerankers import ConsensusReranker, Reranker
from .search import beam_search
from .settings import DecodeConfig


def check_capabilities(
    decode: DecodeConfig, model: Decoder, neighbours: NeighbourIndex | None
) -> None:
    """Refuse settings this model cannot honour, with the fix."""
    for name in ("class_guidance", "class_constraint", "open_vocabulary", "tag_agreement"):
        if getattr(decode, name) and not model.cfg.num_classes:
            raise ConfigError(
                f"{name} needs a model trained with class evidence; turn {name} off (0 or false)"
            )
    if decode.rerank_neighbours and neighbours is None:
        raise ConfigError(
            "rerank_neighbours needs a model that carries a neighbour index (trained with "
            "rerank_neighbours > 0); set rerank_neighbours, neighbour_guidance and "
            "rerank_precision to 0"
        )


_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (wrapped, vocab)


def for_decoding(
    decode: DecodeConfig, model: Decoder, vocab: Vocabulary
) -> tuple[Decoder, Vocabulary]:
    """The decoder and vocabulary captions are searched with: the model's own, or grown by the
    encoder's class words (decode.open_vocabulary; made once per model). Hypotheses' ids are
    words of the vocabulary returned here."""
    if not decode.open_vocabulary:
        return model, vocab
    if model.cfg.num_classes == 0:
        raise ConfigError(
            "open_vocabulary needs a model trained with class evidence; set it to false"
        )
    if model not in _OPEN or _OPEN[model][2] is not vocab:
        _OPEN[model] = (*open_vocabulary(model, vocab), vocab)
    return _OPEN[model][:2]


def adjusters_for(
    decode: DecodeConfig,
    model: Decoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    hood: Neighbourhood | None,
) -> list[ScoreAdjuster]:
    steps: list[ScoreAdjuster] = []
    if decode.repetition_penalty:
        steps.append(RepetitionGuard(decode.repetition_penalty, torch.tensor(vocab.repeatable())))
    bonus = None
    if decode.class_guidance:
        bonus = class_bonus(model, vocab, features, decode.class_guidance)
    if decode.neighbour_guidance:
        guide = neighbour_bonus(hood, decode.neighbour_guidance, vocab).to(features.device)
        bonus = guide if bonus is None else bonus + guide  # one sum: the same floats as before
    if bonus is not None:
        steps.append(WordBonus(bonus))
    if decode.tag_agreement and (banned := contradicting_words(model, vocab, features)) is not None:
        steps.append(BannedWords(banned))
    return steps


def required_words(
    decode: DecodeConfig, model: Decoder, vocab: Vocabulary, features: torch.Tensor
) -> torch.Tensor | None:
    """(N, vocab) bool: the words that name what the classifier sees with at least
    decode.class_constraint (summed over the classes each word stands for); None when off."""
    if not decode.class_constraint:
        return None
    from ..vision.classes import word_scores

    return word_scores(model.class_probabilities(features), vocab.itos) >= decode.class_constraint


def rerankers_for(
    decode: DecodeConfig, vocab: Vocabulary, hood: Neighbourhood | None
) -> list[Reranker]:
    if not decode.rerank_neighbours:
        return []
    return [
        ConsensusReranker(
            hood, vocab, weight=decode.rerank_weight, precision=decode.rerank_precision
        )
    ]


def decode_nbest(
    model: Decoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    decode: DecodeConfig,
    n_best: int = 1,
    neighbours: NeighbourIndex | None = None,
) -> list[list[Hypothesis]]:
    """The n best hypotheses per image under `decode` (the beam widens to n_best if needed).
    With rerankers, the whole beam is searched for them and cut to n_best after. With a class
    constraint, only the images whose best caption lacks a required word are searched again
    under it (most captions already name what the classifier is sure of)."""
    check_capabilities(decode, model, neighbours)
    hood = None
    if decode.rerank_neighbours:
        uses_presence = bool(decode.neighbour_guidance or decode.rerank_precision)
        hood = neighbours.lookup(features, decode.rerank_neighbours, uses_presence)
    adjusters = adjusters_for(decode, model, vocab, features, hood)
    found = _search(decode, model, vocab, features, n_best, hood, adjusters)
    required = required_words(decode, model, vocab, features)
    if required is not None:
        lacking = [
            i
            for i, hyps in enumerate(found)
            if required[i].any() and not required[i, hyps[0].ids].any()
        ]
        if lacking:
            idx = torch.tensor(lacking, device=features.device)
            again = _search(
                decode,
                model,
                vocab,
                features[idx],
                n_best,
                hood.subset(idx) if hood is not None else None,
                [a.subset(idx) for a in adjusters],
                required[idx],
            )
            for i, hyps in zip(lacking, again, strict=True):
                found[i] = hyps
    return found


def _search(
    decode: DecodeConfig,
    model: Decoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    n_best: int,
    hood: Neighbourhood | None,
    adjusters: list[ScoreAdjuster],
    required: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """One beam search and its rerankers (the whole beam is searched for them)."""
    rerankers = rerankers_for(decode, vocab, hood)
    width = max(decode.beam_size, n_best)
    found = beam_search(
        model,
        features,
        beam_size=width,
        max_len=decode.max_len,
        length_penalty=decode.length_penalty,
        n_best=width if rerankers else n_best,
        adjusters=adjusters,
        required=required,
    )
    for rerank in rerankers:
        found = rerank(found)
    return [hyps[:n_best] for hyps in found] if rerankers else found


def caption_features(
    model: Decoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    decode: DecodeConfig,
    batch: int = 250,
    neighbours: NeighbourIndex | None = None,
) -> list[str]:
    """One caption per row of image features, searched as `decode` says, in batches."""
    device = next(model.parameters()).device
    model, vocab = for_decoding(decode, model, vocab)
    out: list[str] = []
    for i in range(0, len(features), batch):
        found = decode_nbest(
            model, vocab, features[i : i + batch].to(device), decode, 1, neighbours
        )
        out.extend(vocab.decode(h[0].ids) for h in found)
    return out
