"""The Python API: `Captioner.load()` gives a ready model; `.caption(images)` gives sentences."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import DecodeConfig
from .core.csvsafe import safe_row, tsv_cell
from .core.errors import BundleError, NoClassHead
from .data.vocab import Vocabulary
from .decoders.neighbours import pooled
from .decoders.pipeline import decode_nbest, for_decoding
from .decoders.registry import decoder_input
from .decoders.settings import check_alternatives
from .storage.bundle import load_bundle
from .vision.encoders import Encoder
from .vision.images import open_image, pixel_limit

ImageLike = str | Path | Image.Image

# Tags below this probability are left out: the ImageNet head spreads the rest over look-alikes.
TAG_THRESHOLD = 0.1


@dataclass(frozen=True)
class Tag:
    """An object the encoder's ImageNet classifier sees, e.g. Tag("zebra", 0.93)."""

    label: str
    probability: float


def tags_text(tags: Sequence[Tag]) -> str:
    """Tags as one text cell (CSV, TSV): "zebra:0.93; hartebeest:0.02" (no ImageNet label
    has a ':' or ';')."""
    return "; ".join(f"{t.label}:{t.probability:.2f}" for t in tags)


@dataclass(frozen=True)
class Alternative:
    caption: str
    confidence: float


@dataclass(frozen=True)
class Description:
    """Everything captioner says about one image.

    confidence: the geometric mean of the decoder's probabilities of the caption's words and
    its end (exp of the mean log-probability), in (0, 1]; low values mean the model hesitated.
    tags: up to `tags` ImageNet classes at >= the threshold, most likely first.
    alternatives: the n best captions of the beam, best first (the first is `caption`)."""

    caption: str
    confidence: float
    tags: list[Tag] = field(default_factory=list)
    alternatives: list[Alternative] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON form every interface answers with (JSONL rows, the HTTP API): numbers to 4
        places, `alternatives` only when more than one caption was asked for."""
        out = {
            "caption": self.caption,
            "confidence": round(self.confidence, 4),
            "tags": [{"label": t.label, "probability": round(t.probability, 4)} for t in self.tags],
        }
        if self.alternatives:
            out["alternatives"] = [
                {"caption": a.caption, "confidence": round(a.confidence, 4)}
                for a in self.alternatives
            ]
        return out


# One row format for every output: TSV/CSV columns, JSONL lines and the HTTP CSV answer.
ROW_FIELDS = ["image", "caption", "confidence", "tags"]  # image,caption first, as always
ROW_FORMATS = ("tsv", "csv", "jsonl")


def format_row(fmt: str, image: str | Path, d: Description) -> str:
    """One output line for image `image` and its Description (file names are user input: CSV
    cells are made formula-safe, TSV cells escape tab, newline, CR and backslash)."""
    if fmt == "jsonl":
        row = {"image": str(image), **d.to_dict()}
        row.pop("alternatives", None)
        return json.dumps(row, ensure_ascii=False) + "\n"
    cells = [str(image), d.caption, f"{d.confidence:.3f}", tags_text(d.tags)]
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerow(safe_row(cells))
        return buf.getvalue()
    if fmt == "tsv":  # no quoting in TSV: a tab or newline in a file name would split the row
        return "\t".join(map(tsv_cell, cells)) + "\n"
    raise ValueError(f"unknown row format {fmt!r}; choose one of {', '.join(ROW_FORMATS)}")


def csv_header() -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(ROW_FIELDS)
    return buf.getvalue()


def default_model_path() -> Path:
    return Path(__file__).parent / "models" / "default"


class Captioner:
    """A loaded encoder + decoder. Load once, caption many times (thread-compatible, no state)."""

    def __init__(
        self, path: Path, device: str | torch.device = "cpu", max_pixels: int | None = None
    ) -> None:
        """`max_pixels`: largest image decoded (None: $CAPTIONER_MAX_PIXELS or 120 MP)."""
        self.bundle = load_bundle(path, device)
        try:
            grid = decoder_input(self.bundle.model.cfg.kind) == "grid"  # attention reads regions
            self.encoder = Encoder(
                self.bundle.encoder, device, state=self.bundle.encoder_state, grid=grid
            )
        except RuntimeError as exc:  # a fine-tuned encoder whose tensors do not fit
            raise BundleError(
                f"{path}: encoder weights do not match {self.bundle.encoder}: {exc}"
            ) from None
        self.device = torch.device(device)
        self.path = Path(path)
        self.max_pixels = None if max_pixels is None else pixel_limit(max_pixels)  # validated

    @classmethod
    def load(
        cls, path: str | Path | None = None, device: str = "cpu", max_pixels: int | None = None
    ) -> Captioner:
        """Load a model folder; None loads the model bundled with the package."""
        return cls(Path(path) if path else default_model_path(), device, max_pixels)

    @property
    def vocab(self) -> Vocabulary:
        return self.bundle.vocab

    @property
    def decoding(self) -> DecodeConfig:
        """The model's own decoding settings (saved in its bundle)."""
        return self.bundle.decoding

    def open(self, image: ImageLike) -> Image.Image:
        """A path or PIL image as an RGB PIL image (decoded at reduced scale when possible;
        ImageTooLarge above `max_pixels`)."""
        if isinstance(image, Image.Image):
            return image
        return open_image(image, self.encoder.spec.image_size, self.max_pixels)

    def decoding_for(self, decode: DecodeConfig | None = None, **overrides: object) -> DecodeConfig:
        """`decode` (else the model's own settings) with any DecodeConfig field replaced, e.g.
        beam_size=3: the one rule every interface (Python, CLI, HTTP, evaluate) applies."""
        return (decode or self.decoding).resolve(**overrides)

    def caption(
        self,
        images: Sequence[ImageLike] | ImageLike,
        *,
        batch_size: int = 16,
        decode: DecodeConfig | None = None,
        **overrides: object,
    ) -> list[str]:
        """One caption per image, in order. Decoding: `decode`, else the model's own settings,
        with any DecodeConfig field given as a keyword replaced (beam_size=3). Raises ImageError
        (an OSError) for unreadable files."""
        found = self.describe(images, tags=0, batch_size=batch_size, decode=decode, **overrides)
        return [d.caption for d in found]

    def describe(
        self,
        images: Sequence[ImageLike] | ImageLike,
        alternatives: int = 1,
        tags: int = 5,
        tag_threshold: float = TAG_THRESHOLD,
        batch_size: int = 16,
        decode: DecodeConfig | None = None,
        **overrides: object,
    ) -> list[Description]:
        """Per image: caption, confidence, up to `tags` tags and, with alternatives=n > 1, the
        n best captions (the beam widens to n if it is narrower). Decoding as in `caption`."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        check_alternatives(alternatives)
        if not 0 <= tags <= 20:
            raise ValueError("tags must be 0..20")
        decode = self.decoding_for(decode, **overrides)
        model, vocab = for_decoding(decode, self.bundle.model, self.vocab)
        out: list[Description] = []
        for i in range(0, len(images), batch_size):
            pixels = [self.encoder.preprocess(self.open(im)) for im in images[i : i + batch_size]]
            feats = self.encoder(torch.from_numpy(np.stack(pixels)))
            found = decode_nbest(model, vocab, feats, decode, alternatives, self.bundle.neighbours)
            seen = self._tags(feats, tags, tag_threshold) if tags else [[] for _ in found]
            for hyps, image_tags in zip(found, seen, strict=True):
                alts = [Alternative(vocab.decode(h.ids), h.confidence) for h in hyps]
                out.append(
                    Description(
                        alts[0].caption,
                        alts[0].confidence,
                        image_tags,
                        alts if alternatives > 1 else [],
                    )
                )
        return out

    @cached_property
    def class_head(self):
        """The encoder's ImageNet classifier, or None for an encoder without one (no tags)."""
        from .vision.classes import class_head

        try:
            return class_head(self.bundle.encoder).to(self.device)
        except NoClassHead:
            return None

    def tags_of(self, feats: torch.Tensor) -> list[list[Tag]]:
        """The tags `describe` reports, for image features the encoder already made."""
        return self._tags(feats, 5, TAG_THRESHOLD)

    def _tags(self, feats: torch.Tensor, k: int, threshold: float) -> list[list[Tag]]:
        if self.class_head is None:
            return [[] for _ in feats]
        return [
            [Tag(str(t["label"]), float(t["probability"])) for t in row]
            for row in self.class_head.top(pooled(feats), k, threshold)
        ]
