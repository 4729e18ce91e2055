"""Where a training step's image features come from.

`prepare_data` reads the dataset, builds the vocabulary and (unless the encoder is fine-tuned)
fills the feature cache. A feature source then hands the trainer one batch of features per
step: `CachedFeatures` reads rows of the cached fp16 memmap; `FinetunedEncoder` decodes,
augments and encodes the images every step through an encoder whose last stage learns. The
trainer never asks which one it has.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from ..core.keys import ENCODER, prefixed, unprefixed
from ..core.progress import Event, Reporter, silent
from ..data.datasets import Record, load_dataset
from ..data.vocab import Vocabulary
from ..decoders.neighbours import NeighbourIndex, pooled
from ..decoders.registry import decoder_input
from ..vision.encoders import Encoder
from ..vision.features import extract_features, stack_pixels, without_worker_traces
from ..vision.images import augment, open_image


@dataclass
class Data:
    vocab: Vocabulary
    # (N_img, D): the cache's read-only fp16 memmap (rows are read per batch, so full COCO
    # never has to fit in memory) or a tensor; None when the encoder is fine-tuned.
    train_feats: np.ndarray | torch.Tensor | None
    train_caps: list[tuple[int, list[int]]]  # (image index, token ids)
    dev_feats: torch.Tensor | None
    dev_records: list[Record]
    train_images: list[Path] = field(default_factory=list)
    train_refs: list[tuple[str, ...]] = field(default_factory=list)  # captions per image (SCST)


def prepare_data(cfg: TrainConfig, device: torch.device, report: Reporter = silent) -> Data:
    kw = {"images": cfg.images, "skip_missing": cfg.skip_missing}
    report(Event("data", message=f"reading {cfg.dataset_format} data from {cfg.dataset_path}"))
    train = load_dataset(cfg.dataset_format, cfg.dataset_path, cfg.train_split, **kw)
    dev = load_dataset(cfg.dataset_format, cfg.dataset_path, cfg.dev_split, **kw)
    n_caps = sum(len(r.captions) for r in train)
    report(
        Event(
            "vocab",
            metrics={"train_images": len(train), "dev_images": len(dev), "captions": n_caps},
            message=f"building the vocabulary from {n_caps} training captions",
        )
    )
    vocab = Vocabulary.build((c for r in train for c in r.captions), cfg.vocab_threshold)
    report(
        Event(
            "vocab",
            1,
            1,
            {"train_images": len(train), "dev_images": len(dev), "words": len(vocab)},
            message=f"{len(train)} training images, {len(dev)} dev images, {len(vocab)} words",
        )
    )
    caps = [
        (i, vocab.encode(c)[: cfg.max_len + 2]) for i, r in enumerate(train) for c in r.captions
    ]
    images = [r.image for r in train]
    refs = [r.captions for r in train]
    if cfg.finetune_encoder:  # features change as the encoder learns: nothing to cache
        return Data(vocab, None, caps, None, dev, images, refs)
    fx = {
        "grid": decoder_input(cfg.decoder) == "grid",
        "cache_dir": cfg.cache_dir,
        "workers": cfg.workers,
        "report": report,
        "device": str(device),
    }
    train_feats = extract_features(images, cfg.encoder, label="train images", **fx)
    dev_feats = extract_features([r.image for r in dev], cfg.encoder, label="dev images", **fx)
    return Data(
        vocab,
        train_feats,
        caps,
        torch.from_numpy(np.asarray(dev_feats, dtype=np.float32)),
        dev,
        images,
        refs,
    )


class CachedFeatures:
    """Rows of the feature cache: nothing to load per step, nothing that learns."""

    def __init__(self, data: Data) -> None:
        self.feats, self.dev = data.train_feats, data.dev_feats
        self.feature_dim = int(data.train_feats.shape[-1])

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def inputs(self, batches: list[list[int]], epoch: int) -> Iterator[None]:
        return itertools.repeat(None)

    def features(self, images: torch.Tensor, inputs: None, device: torch.device) -> torch.Tensor:
        if isinstance(self.feats, torch.Tensor):
            return self.feats[images].float().to(device)
        return torch.from_numpy(np.asarray(self.feats[images.numpy()], dtype=np.float32)).to(device)

    def dev_features(self) -> torch.Tensor:
        return self.dev

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def bundle_state(self) -> dict[str, torch.Tensor] | None:
        return None


class _Augmented(Dataset):
    """Caption index -> a randomly cropped and flipped view of its image (uint8 HWC)."""

    def __init__(self, paths: list[Path], image_of: list[int], size: int) -> None:
        self.paths, self.image_of, self.size = paths, image_of, size

    def __len__(self) -> int:
        return len(self.image_of)

    def __getitem__(self, i: int) -> np.ndarray:
        return augment(open_image(self.paths[self.image_of[i]], self.size), self.size)


class FinetunedEncoder:
    """Images through the encoder every step; its last stage trains with its own learning rate.
    Its weights are saved in checkpoints (``encoder.*``) and in the bundle."""

    def __init__(self, cfg: TrainConfig, data: Data, device: torch.device) -> None:
        self.cfg, self.data = cfg, data
        grid = decoder_input(cfg.decoder) == "grid"
        self.encoder = Encoder(cfg.encoder, device, onnx=False, grid=grid)
        self.tail = self.encoder.trainable_tail()
        self.feature_dim = self.encoder.spec.feature_dim
        size = self.encoder.spec.image_size
        self.image_of = [i for i, _ in data.train_caps]
        self.dev_pixels = torch.from_numpy(
            np.stack([self.encoder.preprocess(open_image(r.image, size)) for r in data.dev_records])
        )

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.tail

    def inputs(self, batches: list[list[int]], epoch: int) -> Iterator[torch.Tensor]:
        dataset = _Augmented(self.data.train_images, self.image_of, self.encoder.spec.image_size)
        return without_worker_traces(
            DataLoader(
                dataset,
                batch_sampler=batches,
                num_workers=self.cfg.workers,
                collate_fn=stack_pixels,
                generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch),
            )
        )

    def features(
        self, images: torch.Tensor, inputs: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        return self.encoder.graph(inputs.to(device))

    @torch.no_grad()
    def dev_features(self, batch: int = 64) -> torch.Tensor:
        device = self.encoder.graph.mean.device
        px = self.dev_pixels
        return torch.cat(
            [
                self.encoder.graph(px[i : i + batch].to(device)).float().cpu()
                for i in range(0, len(px), batch)
            ]
        )

    def state(self) -> dict[str, torch.Tensor]:
        return prefixed(ENCODER, self.encoder.net_state())

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.encoder.base.load_state_dict(unprefixed(ENCODER, tensors))

    def bundle_state(self) -> dict[str, torch.Tensor]:
        return self.encoder.net_state()


FeatureSource = CachedFeatures | FinetunedEncoder


def neighbour_index(data: Data, chunk: int = 512) -> NeighbourIndex:
    """The training photos (pooled cached features) and their captions, for consensus
    reranking. Read in chunks: COCO's grids do not fit in memory at once."""
    feats = data.train_feats
    if feats is None:
        raise ValueError("the neighbour index needs cached training features")
    rows = []
    for i in range(0, len(feats), chunk):
        part = feats[i : i + chunk]
        part = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))
        rows.append(pooled(part))
    return NeighbourIndex.build(torch.cat(rows), data.train_refs)


def make_source(cfg: TrainConfig, data: Data, device: torch.device) -> FeatureSource:
    return FinetunedEncoder(cfg, data, device) if cfg.finetune_encoder else CachedFeatures(data)
