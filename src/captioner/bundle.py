"""Model bundles: a folder with config.json, vocab.json, model.safetensors, metrics.json and a
README.md model card. Nothing is ever unpickled; shapes and versions are checked on load.
Writes go to a sibling temp folder that replaces the target by rename, so a crash never leaves a
half-written bundle."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .encoders import ENCODERS
from .model import ModelConfig, ShowAndTell
from .vocab import Vocabulary

FORMAT = "captioner-bundle"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
ENCODER_WEIGHTS = "encoder.safetensors"


class BundleError(ValueError):
    """A model folder is missing, incomplete or inconsistent; the message says what and why."""


@dataclass
class Bundle:
    model: ShowAndTell
    vocab: Vocabulary
    encoder: str
    decoding: dict
    train_config: dict
    metrics: dict
    path: Path | None = None
    encoder_state: dict[str, torch.Tensor] | None = None  # only for fine-tuned encoders


def replace_dir(tmp: Path, target: Path) -> None:
    """Swap a fully written folder into place (old one removed only after the swap)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; a saved model should be readable like any file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def save_bundle(path: Path, bundle: Bundle, card: str, dtype: torch.dtype = torch.float16) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in bundle.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        if bundle.encoder_state is not None:
            save_file({k: v.contiguous() for k, v in bundle.encoder_state.items()},
                      str(tmp / ENCODER_WEIGHTS), metadata={"format": FORMAT})
        write_json(tmp / "config.json", {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "encoder": bundle.encoder, "model": bundle.model.cfg.model_dump(),
            "decoding": bundle.decoding, "train": bundle.train_config,
        })
        write_json(tmp / "vocab.json", bundle.vocab.to_json())
        write_json(tmp / "metrics.json", bundle.metrics)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        make_readable(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BundleError(f"{path} is missing: {path.parent} is not a complete captioner model")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def load_bundle(path: Path, device: str | torch.device = "cpu") -> Bundle:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model folder {path} not found")
    cfg = _read_json(path / "config.json")
    if cfg.get("format") != FORMAT:
        raise BundleError(f"{path}/config.json is not a captioner model config")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path} has bundle format version {cfg.get('format_version')}; this "
                          f"captioner reads version {FORMAT_VERSION}. Upgrade captioner.")
    if cfg.get("encoder") not in ENCODERS:
        raise BundleError(f"{path}: unknown encoder {cfg.get('encoder')!r}")
    try:
        vocab = Vocabulary.from_json(_read_json(path / "vocab.json"))
        mcfg = ModelConfig(**cfg["model"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: invalid config or vocabulary: {exc}") from None
    if mcfg.vocab_size != len(vocab):
        raise BundleError(f"{path}: model expects {mcfg.vocab_size} words but vocab.json has "
                          f"{len(vocab)}: the files come from different models")
    if ENCODERS[cfg["encoder"]].feature_dim != mcfg.feature_dim:
        raise BundleError(f"{path}: encoder {cfg['encoder']} gives "
                          f"{ENCODERS[cfg['encoder']].feature_dim} features, model expects "
                          f"{mcfg.feature_dim}")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{weights} is missing")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types across versions
        raise BundleError(f"{weights}: unreadable weights ({exc})") from None
    model = ShowAndTell(mcfg)
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: shape {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
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
    return Bundle(model, vocab, cfg["encoder"], cfg.get("decoding", {}), cfg.get("train", {}),
                  metrics, path, encoder_state)
