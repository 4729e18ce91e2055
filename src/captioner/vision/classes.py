"""The encoder's own ImageNet classifier, applied to the pooled features captioner already has.

The encoders drop their ImageNet head to return pooled features; the head is still in the same
weights file (EfficientNet-Lite's `_fc`, ResNet's `fc`: one Linear to 1000 classes; dropout only
in training), so class probabilities for a cached feature cost one matrix product. With
`class_words` they say which caption words an image likely calls for ("zebra", "bus"...):
`word_scores` turns class probabilities into per-vocabulary-word scores for a decoder or a
guided beam search.

The head belongs to the ImageNet weights: with a fine-tuned encoder (`finetune_encoder`) the
features drift from what it was trained on, so its probabilities are only approximate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import NoClassHead
from .class_words import class_names, class_words
from .encoders import pretrained_state
from .registry import get_spec

__all__ = ["ClassHead", "class_head", "class_names", "class_words", "word_scores"]


class ClassHead(nn.Module):
    """Linear(feature_dim, 1000) of an ImageNet CNN: pooled features -> class logits."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if weight.ndim != 2 or bias.shape != weight.shape[:1]:
            raise ValueError(f"bad head shapes: weight {tuple(weight.shape)}, bias {bias.shape}")
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight.float())
            self.fc.bias.copy_(bias.float())
        self.requires_grad_(False)
        self.names = class_names()
        if weight.shape[0] != len(self.names):
            raise ValueError(f"head has {weight.shape[0]} classes, not {len(self.names)}")

    @property
    def weight(self) -> torch.Tensor:
        """(1000, D) float32, frozen: logits = pooled @ weight.T + bias."""
        return self.fc.weight

    @property
    def bias(self) -> torch.Tensor:
        """(1000,) float32, frozen."""
        return self.fc.bias

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, D) pooled features (any float dtype, e.g. the fp16 feature cache) -> logits."""
        return self.fc(pooled.to(self.fc.weight.dtype))

    @torch.inference_mode()
    def probabilities(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, D) pooled features -> (N, 1000) softmax probabilities."""
        return torch.softmax(self(pooled), dim=-1)

    def top(
        self, pooled: torch.Tensor, k: int = 5, threshold: float = 0.0
    ) -> list[list[dict[str, float | str]]]:
        """Per image, up to k {"label", "probability"} (most likely first) at >= threshold."""
        probs = self.probabilities(pooled)
        values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
        return [
            [
                {"label": self.names[i], "probability": p}
                for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)
                if p >= threshold
            ]
            for row_p, row_i in zip(values, indices, strict=True)
        ]


# family -> name of the head's Linear in the encoder's state_dict
_HEADS = {"efficientnet_lite": "_fc", "resnet": "fc"}


def class_head(encoder_name: str) -> ClassHead:
    """The ImageNet head of an encoder in the registry, from the same weights file."""
    spec = get_spec(encoder_name)  # ConfigError for unknown names
    if spec.family not in _HEADS:
        raise NoClassHead(
            f"encoder {encoder_name!r} has no ImageNet classifier head; class probabilities "
            f"need one of: {', '.join(sorted(_HEADS))} encoders"
        )
    prefix = _HEADS[spec.family]
    state = pretrained_state(spec)
    try:
        weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
    except KeyError:
        raise NoClassHead(
            f"the {encoder_name} weights file has no {prefix}.weight/{prefix}.bias (a headless "
            f"checkpoint); reinstall the encoder's ImageNet weights"
        ) from None
    if weight.shape != (1000, spec.feature_dim):
        raise NoClassHead(
            f"the {encoder_name} head is {tuple(weight.shape)}, expected (1000, "
            f"{spec.feature_dim}); it is not an ImageNet-1k classifier"
        )
    return ClassHead(weight, bias).eval()


def word_scores(probs: torch.Tensor, vocab_words: Sequence[str]) -> torch.Tensor:
    """(N, 1000) class probabilities -> (N, V): for each vocabulary word, the summed
    probability of the classes that map to it (0 for words no class maps to). A class with
    several words ("cab" -> taxi, cab, car) adds its probability to each of them."""
    column = {w: j for j, w in enumerate(vocab_words)}
    pairs = [(c, column[w]) for c, ws in class_words().items() for w in ws if w in column]
    out = probs.new_zeros(probs.shape[0], len(vocab_words))
    if pairs:
        classes = torch.tensor([c for c, _ in pairs], device=probs.device)
        cols = torch.tensor([j for _, j in pairs], device=probs.device)
        out.index_add_(1, cols, probs.index_select(1, classes))
    return out
