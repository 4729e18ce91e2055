"""Model bundles: a folder with config.json, vocab.json, model.safetensors, metrics.json and a
README.md model card (plus encoder.safetensors for a fine-tuned encoder, and neighbours.safetensors
with neighbours.json for consensus reranking). Nothing is ever
unpickled; versions, the decoder kind, the vocabulary size and every tensor's shape are checked
on load. Writes go through `atomic_dir`, so a crash never leaves a half-written bundle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import DecodeConfig
from ..core.atomic import atomic_dir
from ..core.errors import BundleError, CaptionerError
from ..data.vocab import Vocabulary
from ..decoders.base import DecoderConfig
from ..decoders.neighbours import NeighbourIndex
from ..decoders.registry import build_decoder
from ..vision.registry import ENCODERS

FORMAT = "captioner-bundle"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
ENCODER_WEIGHTS = "encoder.safetensors"
NEIGHBOURS = "neighbours.safetensors"  # the index's tensors; its captions in neighbours.json


@dataclass
class Bundle:
    model: nn.Module  # a decoders.base.Decoder
    vocab: Vocabulary
    encoder: str
    decoding: DecodeConfig
    train_config: dict
    metrics: dict
    path: Path | None = None
    encoder_state: dict[str, torch.Tensor] | None = None  # only for fine-tuned encoders
    neighbours: NeighbourIndex | None = None  # training photos for consensus reranking


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def save_bundle(path: Path, bundle: Bundle, card: str, dtype: torch.dtype = torch.float16) -> None:
    with atomic_dir(path) as tmp:
        state = {
            k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
            for k, v in bundle.model.state_dict().items()
        }
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        if bundle.encoder_state is not None:
            save_file(
                {k: v.contiguous() for k, v in bundle.encoder_state.items()},
                str(tmp / ENCODER_WEIGHTS),
                metadata={"format": FORMAT},
            )
        if bundle.neighbours is not None:
            tensors = {k: v.contiguous() for k, v in bundle.neighbours.tensors().items()}
            save_file(tensors, str(tmp / NEIGHBOURS), metadata={"format": FORMAT})
            _write_json(tmp / "neighbours.json", {"captions": bundle.neighbours.captions})
        _write_json(
            tmp / "config.json",
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "encoder": bundle.encoder,
                "model": bundle.model.cfg.model_dump(),
                "decoding": bundle.decoding.model_dump(),
                "train": bundle.train_config,
            },
        )
        _write_json(tmp / "vocab.json", bundle.vocab.to_json())
        _write_json(tmp / "metrics.json", bundle.metrics)
        (tmp / "README.md").write_text(card, encoding="utf-8")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BundleError(f"{path} is missing: {path.parent} is not a complete captioner model")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return data


def read_config(path: Path) -> dict:
    """A bundle's config.json, checked for format and version (cheap: no weights)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model folder {path} not found")
    cfg = _read_json(path / "config.json")
    if cfg.get("format") != FORMAT:
        raise BundleError(f"{path}/config.json is not a captioner model config")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format version {cfg.get('format_version')}; this "
            f"captioner reads version {FORMAT_VERSION}. Upgrade captioner."
        )
    if cfg.get("encoder") not in ENCODERS:
        raise BundleError(f"{path}: unknown encoder {cfg.get('encoder')!r}")
    return cfg


def load_bundle(path: Path, device: str | torch.device = "cpu") -> Bundle:
    path = Path(path)
    cfg = read_config(path)
    try:
        vocab = Vocabulary.from_json(_read_json(path / "vocab.json"))
        mcfg = DecoderConfig(**cfg["model"])
        decoding = DecodeConfig.from_saved(cfg.get("decoding"))
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: invalid config or vocabulary: {exc}") from None
    if mcfg.vocab_size != len(vocab):
        raise BundleError(
            f"{path}: model expects {mcfg.vocab_size} words but vocab.json has "
            f"{len(vocab)}: the files come from different models"
        )
    if ENCODERS[cfg["encoder"]].feature_dim != mcfg.feature_dim:
        raise BundleError(
            f"{path}: encoder {cfg['encoder']} gives "
            f"{ENCODERS[cfg['encoder']].feature_dim} features, model expects "
            f"{mcfg.feature_dim}"
        )
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{weights} is missing")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types across versions
        raise BundleError(f"{weights}: unreadable weights ({exc})") from None
    try:
        model = build_decoder(mcfg)
    except CaptionerError as exc:
        raise BundleError(f"{path}: {exc}") from None
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise BundleError(f"{weights} does not match config.json: " + "; ".join(problems[:5]))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.to(device).eval()
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
    encoder_state = None
    if (path / ENCODER_WEIGHTS).exists():
        try:
            encoder_state = load_file(str(path / ENCODER_WEIGHTS))
        except Exception as exc:  # safetensors raises its own error types across versions
            raise BundleError(f"{path / ENCODER_WEIGHTS}: unreadable weights ({exc})") from None
    return Bundle(
        model,
        vocab,
        cfg["encoder"],
        decoding,
        cfg.get("train", {}),
        metrics,
        path,
        encoder_state,
        _load_neighbours(path, mcfg.feature_dim),
    )


def _load_neighbours(path: Path, feature_dim: int) -> NeighbourIndex | None:
    if not (path / NEIGHBOURS).exists():
        return None
    try:
        tensors = load_file(str(path / NEIGHBOURS))
        captions = _read_json(path / "neighbours.json").get("captions")
        if not isinstance(captions, list) or not all(
            isinstance(c, list) and all(isinstance(x, str) for x in c) for c in captions
        ):
            raise ValueError("neighbours.json needs {'captions': [[caption, ...], ...]}")
        index = NeighbourIndex(tensors["mean"], tensors["basis"], tensors["vectors"], captions)
    except BundleError:
        raise
    except Exception as exc:  # safetensors raises its own error types across versions
        raise BundleError(f"{path / NEIGHBOURS}: unusable neighbour index ({exc})") from None
    if index.mean.shape[0] != feature_dim:
        raise BundleError(
            f"{path / NEIGHBOURS}: indexes {index.mean.shape[0]} features, model expects "
            f"{feature_dim}"
        )
    return index


def read_summary(path: Path) -> dict:
    """What a model list shows, without loading weights: config.json, metrics.json, the card and
    the size on disk. Raises BundleError for a folder that is not a readable bundle."""
    path = Path(path)
    cfg = read_config(path)
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
    card_path = path / "README.md"
    card = card_path.read_text(encoding="utf-8", errors="replace") if card_path.exists() else ""
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {"config": cfg, "metrics": metrics, "card": card, "size_bytes": size}
