"""The one typed object that describes a training run. CLI flags, a TOML/YAML file, or (later) a
web form all produce a `TrainConfig`; it is saved inside the model bundle."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .encoders import ENCODERS


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the field and the fix."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data
    dataset_format: Literal["flickr8k", "coco", "karpathy", "captions"] = Field(
        "flickr8k", description="dataset format: flickr8k, coco, karpathy (dataset_coco.json)"
        ", or captions (CSV/JSONL)")
    dataset_path: Path = Field(
        description="dataset folder (flickr8k, coco) or captions file (captions)")
    images: Path | None = Field(
        None, description="image folder for a captions file (default: the file's folder)")
    train_split: str = Field("train", description="split to train on")
    dev_split: str = Field("dev", description="split used to pick the best epoch")
    skip_missing: bool = Field(False, description="skip (and count) images that do not exist")
    # encoder
    encoder: str = Field("efficientnet_lite0", description="image encoder: "
                         + ", ".join(ENCODERS))
    finetune_encoder: bool = Field(
        False, description="also train the encoder's last stage (random crops and flips; "
        "no feature cache, so much slower: use a GPU)")
    encoder_lr: float = Field(1e-4, gt=0, le=1, description="peak learning rate of the "
                              "fine-tuned encoder stage")
    # the seed's knobs
    batch_size: int = Field(64, ge=1, le=4096, description="captions per training step")
    vocab_threshold: int = Field(8, ge=1, description="keep words seen at least this often")
    embed_size: int = Field(256, ge=8, le=4096, description="word/image embedding size")
    hidden_size: int = Field(512, ge=8, le=4096, description="LSTM hidden size")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="peak Adam learning rate")
    epochs: int = Field(8, ge=1, le=1000, description="passes over all training captions")
    # the rest of the recipe
    num_layers: int = Field(1, ge=1, le=4, description="LSTM layers")
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout on inputs and outputs")
    grad_clip: float = Field(5.0, gt=0, description="clip gradient norm to this")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="cross-entropy label smoothing")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="learning-rate schedule after a one-epoch linear warm-up")
    max_len: int = Field(20, ge=2, le=100, description="longest caption in words")
    seed: int = Field(42, description="random seed (runs are reproducible)")
    # decoding used for dev scores
    beam_size: int = Field(3, ge=1, le=20, description="beam size for dev-split scoring")
    length_penalty: float = Field(1.0, ge=0, le=3, description="beam length normalisation")
    # machinery
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    workers: int = Field(1, ge=0, le=64, description="image-loading processes for features")
    cache_dir: Path | None = Field(None, description="feature cache (default ~/.cache/captioner)")

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        if value not in ENCODERS:
            raise ValueError(f"unknown encoder {value!r}; choose one of {', '.join(ENCODERS)}")
        return value

    def fingerprint(self) -> dict:
        """Settings a checkpoint must agree with to be resumed (not epochs or machinery)."""
        skip = {"epochs", "device", "workers", "cache_dir", "beam_size", "length_penalty"}
        return self.model_dump(mode="json", exclude=skip)


def load_config_file(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        else:
            raise ConfigError(f"{path}: use a .toml, .yaml or .yml config file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    return data


PRESETS = Path(__file__).parent / "presets"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def make_config(file: Path | None = None, preset: str | None = None,
                **overrides: object) -> TrainConfig:
    """Defaults, then the preset, then the file, then explicit overrides (None = not given)."""
    data: dict = {}
    if preset:
        if preset not in presets():
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(presets())}")
        data.update(load_config_file(PRESETS / f"{preset}.toml"))
    if file:
        data.update(load_config_file(file))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}"
                 for e in exc.errors()]
        where = f" in {file}" if file else ""
        raise ConfigError(f"invalid training settings{where}:\n" + "\n".join(lines)) from None
