"""Open vocabulary from the encoder's classes (novel-object captioning: Hendricks et al. 2016,
DCC; the copy idea of Wu et al. 2018, DNOC). A class word no training caption used (zebra,
teddy, burger) is added to the vocabulary; the decoder's own distribution for its source word
(vision.class_words.TRANSFER: zebra <- horse) is split between the two by the classifier:

    p(zebra) = p(horse slot) x e(zebra)      p(horse) = p(horse slot) x (1 - sum of e)

where e(w) is the summed probability of the ImageNet classes whose words include w (at most
MAX_SHARE in all). So a zebra can only be named where the model would put an animal like a
horse, and only as much as the classifier sees one; the probabilities still sum to one, so
confidence and reranking read a proper distribution. The new word is fed back as its source.
No weights change: it wraps a trained decoder that has a class head.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.vocab import Vocabulary
from .base import Decoder, State

MAX_SHARE = 0.95  # the new words of one source take at most this share of its slot


def added_words(vocab: Vocabulary) -> list[tuple[str, str]]:
    """(new word, source word) for every class word the vocabulary lacks, in a fixed order."""
    from ..vision.class_transfer import transfer_source
    from ..vision.class_words import class_words

    words = sorted({w for ws in class_words().values() for w in ws} - set(vocab.stoi))
    pairs = [(w, transfer_source(w, vocab.stoi)) for w in words]
    return [(w, s) for w, s in pairs if s is not None]


class OpenVocabulary(nn.Module):
    """A decoder whose vocabulary is grown by `added_words`, behind the same interface."""

    def __init__(self, base: nn.Module, vocab: Vocabulary) -> None:
        super().__init__()
        if not base.cfg.num_classes:
            raise ValueError("an open vocabulary needs a decoder with a class head")
        from ..vision.class_words import class_words

        self.base, self.cfg = base, base.cfg
        pairs = added_words(vocab)
        self.vocab = Vocabulary([*vocab.itos, *(w for w, _ in pairs)])
        self.n_base = len(vocab)
        column = {w: j for j, (w, _) in enumerate(pairs)}
        to_words = torch.zeros(base.cfg.num_classes, len(pairs))  # class -> its new words
        for c, ws in class_words().items():
            for w in ws:
                if w in column:
                    to_words[c, column[w]] = 1.0
        self.register_buffer("to_words", to_words, persistent=False)
        src = torch.tensor([vocab.stoi[s] for _, s in pairs], dtype=torch.long)
        self.register_buffer("source", src, persistent=False)

    def class_probabilities(self, features: torch.Tensor) -> torch.Tensor | None:
        return self.base.class_probabilities(features)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("train the base decoder; the open vocabulary is for decoding")

    def init_state(self, features: torch.Tensor) -> State:
        # Each new word's share of its source's slot; a source's new words share at most
        # MAX_SHARE of it together, so the source keeps some probability of its own.
        share = (self.base.class_probabilities(features) @ self.to_words).clamp(max=1.0)
        total = torch.zeros(share.shape[0], self.n_base, device=share.device)
        total.index_add_(1, self.source, share)
        scale = (MAX_SHARE / total.clamp(min=MAX_SHARE)).index_select(1, self.source)
        share = share * scale
        total = total.clamp(max=MAX_SHARE)
        split = (share.clamp(min=1e-12).log(), torch.log1p(-total))
        return self.base.init_state(features), split

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        inner, (new, kept) = state
        fed = torch.where(
            tokens >= self.n_base,
            self.source[(tokens - self.n_base).clamp(min=0)],
            tokens,
        )
        logp, inner = self.base.step(fed, inner)
        out = torch.cat([logp + kept, logp.index_select(1, self.source) + new], dim=1)
        return out, (inner, (new, kept))

    def repeat_state(self, state: State, k: int) -> State:
        inner, (new, kept) = state
        split = (new.repeat_interleave(k, dim=0), kept.repeat_interleave(k, dim=0))
        return self.base.repeat_state(inner, k), split

    def select_state(self, state: State, rows: torch.Tensor) -> State:
        inner, (new, kept) = state
        return self.base.select_state(inner, rows), (new[rows], kept[rows])


def open_vocabulary(model: Decoder, vocab: Vocabulary) -> tuple[OpenVocabulary, Vocabulary]:
    wrapped = OpenVocabulary(model, vocab)
    return wrapped, wrapped.vocab
