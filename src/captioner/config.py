"""The typed objects that describe a run. `TrainConfig` is what CLI flags, a TOML/YAML file,
a preset or the web form produce (all through `make_config`); it is saved inside the model
bundle. `DecodeConfig` is how captions are searched, shared by training's dev scoring, the
bundle, the Python API, the HTTP API and the CLI. Importing this module never imports torch."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .core.errors import ConfigError
from .vision.registry import ENCODERS

DATASET_FORMATS = ("flickr8k", "coco", "karpathy", "captions")
DatasetFormat = Literal["flickr8k", "coco", "karpathy", "captions"]


class DecodeConfig(BaseModel):
    """How a caption is searched for. One rule for defaults everywhere: what the caller asks
    for, else what the model bundle saved, else these defaults (`resolve`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beam_size: int = Field(3, ge=1, le=20, description="beam size (1 = greedy)")
    max_len: int = Field(20, ge=2, le=100, description="longest caption in words")
    length_penalty: float = Field(
        1.0,
        ge=0,
        le=3,
        description="beam length normalisation: score / length**penalty "
        "(0 = most probable sequence; larger favours longer captions)",
    )
    repetition_penalty: float = Field(
        0.0,
        ge=0,
        le=20,
        description="log-probability taken off a content word the caption already holds (0 = off)",
    )
    class_guidance: float = Field(
        0.0,
        ge=0,
        le=20,
        description="log-probability bonus for words naming what the encoder's ImageNet "
        "classifier recognises (x its probability), until the caption uses them; "
        "models with class evidence only (0 = off)",
    )

    rerank_neighbours: int = Field(
        0,
        ge=0,
        le=100,
        description="rerank the beam's captions by their agreement (CIDEr-D) with the captions "
        "of this many most similar training photos (0 = off; models with a neighbour index only)",
    )
    rerank_weight: float = Field(
        0.5,
        ge=0,
        le=10,
        description="weight of the model's own log-probability per word against that agreement",
    )
    rerank_precision: float = Field(
        0.0,
        ge=0,
        le=10,
        description="reranking also scores each word by the share of the rerank_neighbours "
        "photos whose captions use it, less 0.6: words they rarely use cost the caption (0 = off)",
    )
    neighbour_guidance: float = Field(
        0.0,
        ge=0,
        le=20,
        description="log-probability bonus while searching for words the captions of the "
        "rerank_neighbours photos use (x their share, less 0.2) until the caption uses them "
        "(0 = off)",
    )

    def resolve(self, **overrides: object) -> DecodeConfig:
        """This config with the given (non-None) settings replaced, validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        try:
            return DecodeConfig(**{**self.model_dump(), **given})
        except ValidationError as exc:
            raise ConfigError(_describe(exc, "decoding settings")) from None

    @classmethod
    def from_saved(cls, data: dict | None) -> DecodeConfig:
        """A bundle's saved decoding block (unknown keys from newer versions are ignored)."""
        data = data or {}
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})


def _decode_field(name: str):
    # TrainConfig's decoding fields are DecodeConfig's own: one default and one limit each.
    return DecodeConfig.model_fields[name]


def _describe(exc: ValidationError, what: str) -> str:
    lines = [f"  {'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()]
    return f"invalid {what}:\n" + "\n".join(lines)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data
    dataset_format: DatasetFormat = Field(
        "flickr8k",
        description="dataset format: flickr8k, coco, karpathy (dataset_coco.json)"
        ", or captions (CSV/JSONL)",
    )
    dataset_path: Path = Field(
        description="dataset folder (flickr8k, coco) or captions file (captions)"
    )
    images: Path | None = Field(
        None, description="image folder for a captions file (default: the file's folder)"
    )
    train_split: str = Field("train", description="split to train on")
    dev_split: str = Field("dev", description="split used to pick the best epoch")
    skip_missing: bool = Field(False, description="skip (and count) images that do not exist")
    # encoder
    encoder: str = Field(
        "efficientnet_lite0",
        description="image encoder: " + ", ".join(ENCODERS),
        json_schema_extra={"enum": list(ENCODERS)},  # the web form's choices
    )
    finetune_encoder: bool = Field(
        False,
        description="also train the encoder's last stage (random crops and flips; "
        "no feature cache, so much slower: use a GPU)",
    )
    encoder_lr: float = Field(
        1e-4, gt=0, le=1, description="peak learning rate of the fine-tuned encoder stage"
    )
    # decoder
    decoder: Literal["show_and_tell", "attention"] = Field(
        "show_and_tell",
        description="show_and_tell (pooled image features are the LSTM's first input) or "
        "attention (soft attention over the encoder's spatial grid, Show Attend and Tell)",
    )
    attention_size: int = Field(512, ge=8, le=4096, description="attention layer size")
    class_evidence: bool = Field(
        False,
        description="attention decoder: also attend to the encoder's own ImageNet class "
        "probabilities (what the CNN recognises)",
    )
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
        "cosine", description="learning-rate schedule after a one-epoch linear warm-up"
    )
    average_epochs: int = Field(
        1,
        ge=1,
        le=1000,
        description="also score the mean of the last N cross-entropy epochs' weights on dev "
        "and keep it when its CIDEr-D beats every epoch's; 1 = off",
    )
    max_len: int = _decode_field("max_len")
    # self-critical sequence training (Rennie et al., 2017) after the cross-entropy epochs
    scst_epochs: int = Field(
        0,
        ge=0,
        le=1000,
        description="epochs of self-critical training (CIDEr-D reward, "
        "greedy baseline) after the cross-entropy epochs; 0 = none",
    )
    scst_lr: float = Field(5e-5, gt=0, le=1, description="self-critical learning rate")
    scst_baseline: Literal["mean", "greedy"] = Field(
        "mean",
        description="reward baseline: mean of the image's other samples, or the greedy caption "
        "(Rennie et al.; collapses label-smoothed models)",
    )
    scst_samples: int = Field(5, ge=1, le=32, description="sampled captions per image")
    scst_batch_size: int = Field(32, ge=1, le=4096, description="images per self-critical step")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="random seed (runs are reproducible)")
    # decoding used for dev scores and saved in the bundle as the model's default
    beam_size: int = _decode_field("beam_size")
    length_penalty: float = _decode_field("length_penalty")
    repetition_penalty: float = _decode_field("repetition_penalty")
    class_guidance: float = _decode_field("class_guidance")
    rerank_neighbours: int = _decode_field("rerank_neighbours")
    rerank_weight: float = _decode_field("rerank_weight")
    rerank_precision: float = _decode_field("rerank_precision")
    neighbour_guidance: float = _decode_field("neighbour_guidance")
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

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.class_evidence and self.decoder != "attention":
            raise ValueError("class_evidence needs decoder = attention")
        if self.average_epochs > self.epochs:
            raise ValueError(
                f"average_epochs ({self.average_epochs}) cannot exceed epochs ({self.epochs})"
            )
        if self.scst_epochs and self.scst_baseline == "mean" and self.scst_samples < 2:
            raise ValueError("the mean baseline needs scst_samples >= 2")
        if self.scst_epochs and self.finetune_encoder:
            raise ValueError(
                "self-critical training reads cached features: it cannot be "
                "combined with finetune_encoder"
            )
        if self.rerank_neighbours and self.finetune_encoder:
            raise ValueError(
                "rerank_neighbours indexes the training photos' cached features: it cannot be "
                "combined with finetune_encoder (set rerank_neighbours = 0)"
            )
        return self

    @property
    def decoding(self) -> DecodeConfig:
        return DecodeConfig(
            beam_size=self.beam_size,
            max_len=self.max_len,
            length_penalty=self.length_penalty,
            repetition_penalty=self.repetition_penalty,
            class_guidance=self.class_guidance,
            rerank_neighbours=self.rerank_neighbours,
            rerank_weight=self.rerank_weight,
            rerank_precision=self.rerank_precision,
            neighbour_guidance=self.neighbour_guidance,
        )

    def fingerprint(self) -> dict:
        """Settings a checkpoint must agree with to be resumed (not epochs or machinery).
        Settings added later are left out at their defaults, so older runs still resume."""
        # Epoch counts may change: a finished run can be extended, e.g. with SCST epochs.
        skip = {
            "epochs",
            "scst_epochs",
            "device",
            "workers",
            "cache_dir",
            "beam_size",
            "length_penalty",
            "repetition_penalty",
            "class_guidance",
            "rerank_neighbours",
            "rerank_weight",
            "rerank_precision",
            "neighbour_guidance",
        }
        dump = self.model_dump(mode="json", exclude=skip)
        return {
            k: v
            for k, v in dump.items()
            if k not in _LATER or v != TrainConfig.model_fields[k].default
        }


# Fields added after the first release (see fingerprint).
_LATER = {
    "decoder",
    "attention_size",
    "class_evidence",
    "scst_epochs",
    "scst_lr",
    "scst_baseline",
    "scst_samples",
    "scst_batch_size",
    "average_epochs",
}


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


def preset_values(name: str) -> dict:
    """The settings a preset changes from the defaults."""
    if name not in presets():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(presets())}")
    return load_config_file(PRESETS / f"{name}.toml")


def make_config(
    file: Path | None = None, preset: str | None = None, **overrides: object
) -> TrainConfig:
    """Defaults, then the preset, then the file, then explicit overrides (None = not given)."""
    data: dict = {}
    if preset:
        data.update(preset_values(preset))
    if file:
        data.update(load_config_file(file))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        raise ConfigError(
            _describe(exc, f"training settings{f' in {file}' if file else ''}")
        ) from None
