"""Tokenizer and vocabulary. One tokenizer for training, decoding and evaluation."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# Words a caption may repeat ("a man in a red shirt"); the decoder's repetition guard penalises
# repeating any other word ("a man and a man").
_FUNCTION = """a an the and or of in on at to into onto over under near by with without from
for while as is are be being its his her their he she they it one two three another other each
some up down out off through behind front next top"""
FUNCTION_WORDS = frozenset(_FUNCTION.split())


def tokenize(text: str) -> list[str]:
    """Lower-case words; punctuation is dropped (captions are scored without it anyway)."""
    return _WORD.findall(text.lower())


class Vocabulary:
    def __init__(self, words: Iterable[str]) -> None:
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int) -> Vocabulary:
        """Words seen at least `threshold` times, most frequent first, ties alphabetical."""
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted(
            (w for w, n in counts.items() if n >= threshold), key=lambda w: (-counts[w], w)
        )
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str) -> list[int]:
        """Token ids with <start> and <end>."""
        ids = [self.stoi.get(w, self.unk_id) for w in tokenize(caption)]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """A clean sentence: stops at <end>, drops other special tokens."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i >= len(SPECIALS):
                words.append(self.itos[i])
        return " ".join(words)

    def repeatable(self) -> list[bool]:
        """Per id: may this word appear twice in a caption (function words and specials)."""
        return [i < len(SPECIALS) or w in FUNCTION_WORDS for i, w in enumerate(self.itos)]

    def to_json(self) -> dict:
        return {"words": self.itos}

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        if not isinstance(data, dict) or not isinstance(data.get("words"), list):
            raise ValueError("vocab.json must be an object with a 'words' list")
        return cls(data["words"])
