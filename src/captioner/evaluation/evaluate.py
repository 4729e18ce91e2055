"""The evaluation pipeline: caption a dataset split with a model and score it. The CLI's
`evaluate`, bench scripts and training's per-epoch dev scores all go through here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import DecodeConfig
from ..core.progress import Reporter, silent
from ..data.datasets import Record
from ..data.vocab import Vocabulary
from ..decoders.neighbours import NeighbourIndex
from ..decoders.pipeline import caption_features
from ..vision.features import extract_features
from .metrics import ALL_METRICS, has_java, require_java, score_records
from .objects import contradicts, mention_scores


def dev_scores(
    model: nn.Module,
    vocab: Vocabulary,
    features: torch.Tensor,
    records: Sequence[Record],
    decode: DecodeConfig,
    final: bool = False,
    neighbours: NeighbourIndex | None = None,
) -> dict[str, float]:
    """Dev-split scores. Per epoch: BLEU and CIDEr-D with captioner's own tokenizer (no Java
    start-up, ~0.001 from PTB). `final`: every metric through the official PTB tokenizer when
    Java exists (else no METEOR)."""
    caps = caption_features(model, vocab, features, decode, neighbours=neighbours)
    if final:
        return score_records(
            records, caps, ALL_METRICS if has_java() else ("bleu", "rouge", "cider")
        )
    scores = score_records(records, caps, ("bleu", "cider"), tokenizer="simple")
    return {k: scores[k] for k in ("BLEU-4", "CIDEr", "BLEU-1", "mean_length")}


def object_report(captioner, feats: torch.Tensor, captions: list[str], records) -> dict:
    """Object mentions against the references, and contradictions with the tags (the
    encoder's own ImageNet classes, as the API reports them)."""
    out = mention_scores(captions, [r.captions for r in records])
    tags = []
    for i in range(0, len(feats), 256):
        tags += captioner.tags_of(feats[i : i + 256])
    bad = [
        contradicts(c, [(t.label, t.probability) for t in ts])
        for c, ts in zip(captions, tags, strict=True)
    ]
    out["contradictions"] = sum(bad) / max(len(bad), 1)
    return out


def evaluate_model(
    captioner,
    records: Sequence[Record],
    decode: DecodeConfig | None = None,
    cache_dir: Path | None = None,
    report: Reporter = silent,
) -> dict:
    """Caption `records` with a loaded `api.Captioner` (features through the cache) and score
    them with every metric. Returns the report: decoding, metrics, lengths, every caption."""
    decode = decode or captioner.decoding
    require_java()  # before minutes of feature extraction, not after
    feats = extract_features(
        [r.image for r in records], captioner.encoder, cache_dir=cache_dir, report=report
    )
    feats = torch.from_numpy(np.asarray(feats, dtype=np.float32))
    bundle = captioner.bundle
    captions = caption_features(
        bundle.model, captioner.vocab, feats, decode, neighbours=bundle.neighbours
    )
    scores = score_records(records, captions)
    ref_len = scores.pop("reference_mean_length")
    mean_len = scores.pop("mean_length")
    return {
        "model": str(captioner.path),
        "decoding": decode.model_dump(),
        "metrics": scores,
        "objects": object_report(captioner, feats, captions, records),
        "mean_length": mean_len,
        "reference_mean_length": ref_len,
        "captions": [
            {"image": str(r.image), "caption": c} for r, c in zip(records, captions, strict=True)
        ],
    }
