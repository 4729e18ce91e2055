"""Model bundles: a folder with config.json, vocab.json, model.safetensors, metrics.json and a
README.md model card (plus encoder.safetensors for a fine-tuned encoder, and neighbours.safetensors
with neighbours.json for consensus reranking). Nothing is ever unpickled.

A bundle is checked whole before it is used, so a broken one fails once, with its reason, and
never on a photo: config.json against its schema, versions, the decoder kind, the vocabulary
size and every tensor's shape against the config (read from the file's header, before anything
is allocated: a config that asks for a huge model cannot take the memory), every weight finite,
then one decoding step on a blank image. A model whose weights are not finite is never written.
Writes go through `atomic_dir`, so a crash never leaves a half-written bundle."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import DecodeConfig
from ..core.atomic import atomic_dir
from ..core.errors import BundleError, CaptionerError, ConfigError
from ..data.vocab import Vocabulary
from ..decoders.base import DecoderConfig
from ..decoders.neighbours import NeighbourIndex
from ..decoders.pipeline import check_capabilities
from ..decoders.registry import build_decoder, decoder_input
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
    state = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in bundle.model.state_dict().items()
    }
    # Checked after the cast: a finite fp32 weight beyond fp16's range (65504) becomes infinite.
    _check_finite(state, Path(path) / WEIGHTS, "cannot save this model")
    if bundle.encoder_state is not None:
        _check_finite(bundle.encoder_state, Path(path) / ENCODER_WEIGHTS, "cannot save this model")
    with atomic_dir(path) as tmp:
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
    if not isinstance(cfg.get("encoder"), str) or cfg["encoder"] not in ENCODERS:
        raise BundleError(f"{path}: unknown encoder {cfg.get('encoder')!r}")
    return cfg


def load_bundle(path: Path, device: str | torch.device = "cpu") -> Bundle:
    path = Path(path)
    cfg = read_config(path)
    mcfg, decoding, vocab = _parse(path, cfg)
    weights = path / WEIGHTS
    expected = _check_shapes(path, mcfg)  # from the header: nothing allocated yet
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types across versions
        raise BundleError(f"{weights}: unreadable weights ({exc})") from None
    _check_finite(state, weights, "cannot use this model")
    model = build_decoder(mcfg)  # the sizes match the file, so memory is what the file holds
    model.load_state_dict({k: v.to(expected[k]) for k, v in state.items()})
    model.to(device).eval()
    _trial_step(path, model, vocab, device)
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
    encoder_state = None
    if (path / ENCODER_WEIGHTS).exists():
        try:
            encoder_state = load_file(str(path / ENCODER_WEIGHTS))
        except Exception as exc:  # safetensors raises its own error types across versions
            raise BundleError(f"{path / ENCODER_WEIGHTS}: unreadable weights ({exc})") from None
        _check_finite(encoder_state, path / ENCODER_WEIGHTS, "cannot use this model")
    neighbours = _load_neighbours(path, mcfg.feature_dim)
    try:  # its own decoding must be one it can honour, or every caption request would fail
        check_capabilities(decoding, model, neighbours)
    except ConfigError as exc:
        raise BundleError(f"{path}/config.json: its decoding settings do not fit: {exc}") from None
    return Bundle(
        model,
        vocab,
        cfg["encoder"],
        decoding,
        cfg.get("train") or {},
        metrics,
        path,
        encoder_state,
        neighbours,
    )


def check_bundle(path: Path) -> dict:
    """Everything about a bundle that can be checked without reading its weights (config.json
    against its schema, the vocabulary, every tensor's shape from the file's header); returns
    config.json. Cheap enough for every model list; BundleError says what is wrong."""
    path = Path(path)
    cfg = read_config(path)
    mcfg, _, _ = _parse(path, cfg)
    _check_shapes(path, mcfg)
    return cfg


def _parse(path: Path, cfg: dict) -> tuple[DecoderConfig, DecodeConfig, Vocabulary]:
    """config.json's model and decoding blocks and vocab.json, validated and consistent."""
    for key, required in (("model", True), ("decoding", False), ("train", False)):
        value = cfg.get(key)
        if not isinstance(value, dict) and (required or value is not None):
            raise BundleError(
                f"{path}/config.json: '{key}' must be an object of settings, not {value!r}"
            )
    try:
        vocab = Vocabulary.from_json(_read_json(path / "vocab.json"))
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}/vocab.json: invalid vocabulary: {exc}") from None
    try:
        mcfg = DecoderConfig(**cfg["model"])
        decoding = DecodeConfig.from_saved(cfg.get("decoding"))
    except ValidationError as exc:
        raise BundleError(f"{path}/config.json: {_one_line(exc)}") from None
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
    return mcfg, decoding, vocab


def _one_line(exc: ValidationError) -> str:
    """pydantic's errors as "field: problem; field: problem" (no links to its docs)."""
    where = {"DecoderConfig": "model", "DecodeConfig": "decoding"}.get(exc.title, exc.title)
    return "; ".join(f"{'.'.join(map(str, [where, *e['loc']]))}: {e['msg']}" for e in exc.errors())


def _check_shapes(path: Path, mcfg: DecoderConfig) -> dict[str, torch.dtype]:
    """Every tensor of model.safetensors has the name and shape config.json implies, read from
    the file's header; returns each tensor's dtype in the model."""
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{weights} is missing")
    try:
        with safe_open(str(weights), "pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types across versions
        raise BundleError(f"{weights}: unreadable weights ({exc})") from None
    # The decoder is built only when config.json's sizes are about what the file holds, so a
    # hidden_size of 60000 allocates nothing. (Building it on the meta device instead imports
    # torch's symbolic-shape machinery: +160 MB in every process that lists models.)
    held = sum(math.prod(shape) for shape in found.values())
    described = _rough_size(mcfg)
    if described > 2 * held + 1_000_000:
        raise BundleError(
            f"{weights} does not match config.json: its sizes describe about {described:,} "
            f"weights, the file holds {held:,}"
        )
    try:
        # Its random initial weights must not draw from the global generator: loading a
        # model leaves a caller's seeded random state as it was.
        with torch.random.fork_rng(devices=[]):
            model = build_decoder(mcfg)
    except CaptionerError as exc:
        raise BundleError(f"{path}: {exc}") from None
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [
        f"{k}: shape {found[k]} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k] != tuple(v.shape)
    ]
    if problems:
        raise BundleError(f"{weights} does not match config.json: " + "; ".join(problems[:5]))
    return {k: v.dtype for k, v in expected.items()}


def _rough_size(m: DecoderConfig) -> int:
    """About how many weights a decoder of this config has (an upper estimate for both kinds:
    embeddings, output layer, LSTM, attention, class evidence)."""
    v, e, h, d, a = m.vocab_size, m.embed_size, m.hidden_size, m.feature_dim, m.attention_size
    lstm = 4 * h * (e + 2 * h) * m.num_layers
    return v * (e + h) + lstm + d * h + 2 * h * a + 3 * h * h + m.num_classes * (d + h)


def _check_finite(tensors: dict[str, torch.Tensor], file: Path, what: str) -> None:
    # A float64 sum is finite exactly when every fp16/fp32 value is (no overflow is possible),
    # and is ten times faster than isfinite() on fp16 on a CPU.
    bad = [
        k
        for k, v in tensors.items()
        if v.is_floating_point() and not v.sum(dtype=torch.float64).isfinite()
    ]
    if bad:
        raise BundleError(
            f"{what}: {file} holds infinite or NaN values ({', '.join(sorted(bad)[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): its training diverged; train it again with a "
            "lower learning_rate or weight_decay"
        )


def _trial_step(path: Path, model: nn.Module, vocab: Vocabulary, device: object) -> None:
    """One decoding step on a blank image, so weights that load but cannot caption fail here,
    once, rather than on every photo."""
    cfg = model.cfg
    shape = (1, 4, cfg.feature_dim) if decoder_input(cfg.kind) == "grid" else (1, cfg.feature_dim)
    try:
        with torch.inference_mode():
            state = model.init_state(torch.zeros(shape, device=device))
            logp, _ = model.step(torch.full((1,), vocab.start_id, device=device), state)
    except Exception as exc:  # whatever the decoder raises: the bundle is what is wrong
        raise BundleError(
            f"{path}: a trial decoding step fails ({type(exc).__name__}: {exc})"
        ) from None
    if tuple(logp.shape) != (1, len(vocab)) or not logp.isfinite().all():
        raise BundleError(
            f"{path}: a trial decoding step gives {tuple(logp.shape)} scores, not finite "
            f"scores for each of the {len(vocab)} words: the weights are unusable"
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
        _check_finite(tensors, path / NEIGHBOURS, "cannot use this model")
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
    the size on disk. Raises BundleError for a folder that is not a readable bundle or whose
    config and tensors disagree (`check_bundle`)."""
    path = Path(path)
    cfg = check_bundle(path)
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
    card_path = path / "README.md"
    card = card_path.read_text(encoding="utf-8", errors="replace") if card_path.exists() else ""
    # Links are not followed: a model folder's size is its own files'.
    size = sum(f.lstat().st_size for f in path.iterdir() if f.is_file() and not f.is_symlink())
    return {"config": cfg, "metrics": metrics, "card": card, "size_bytes": size}
