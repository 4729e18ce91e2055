"""The typed objects that describe a run. `TrainConfig` is what CLI flags, a TOML/YAML file,
a preset or the web form produce (all through `make_config`); it is saved inside the model
bundle. It holds a `DecodeConfig` (decoders/settings.py: how captions are searched), used for dev
scores and saved in the bundle as the model's own decoding. Importing this module never imports
torch."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from .core.errors import ConfigError, validation_message
from .decoders.registry import DECODERS
from .decoders.settings import DecodeConfig
from .vision.registry import ENCODERS

__all__ = ["DATASET_FORMATS", "DecodeConfig", "TrainConfig", "make_config", "presets"]

DATASET_FORMATS = ("flickr8k", "coco", "karpathy", "captions")
DatasetFormat = Literal["flickr8k", "coco", "karpathy", "captions"]


class TrainConfig(BaseModel):
    # No infinity or NaN anywhere: JSON cannot hold them (a job's saved settings would read
    # back as null) and no recipe needs them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

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
    decoder: str = Field(
        "show_and_tell",
        description="caption decoder: "
        + "; ".join(f"{s.kind} ({s.help})" for s in DECODERS.values()),
        json_schema_extra={"enum": list(DECODERS)},  # the web form's choices
    )
    attention_size: int = Field(512, ge=8, le=4096, description="attention layer size")
    class_evidence: bool = Field(
        False,
        description="attention decoder: also attend to the encoder's own ImageNet class "
        "probabilities (what the CNN recognises)",
    )
    # the seed's knobs
    batch_size: int = Field(64, ge=1, le=4096, description="captions per training step")
    vocab_threshold: int = Field(
        8, ge=1, le=10_000, description="keep words seen at least this often"
    )
    embed_size: int = Field(256, ge=8, le=4096, description="word/image embedding size")
    hidden_size: int = Field(512, ge=8, le=4096, description="LSTM hidden size")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="peak Adam learning rate")
    epochs: int = Field(8, ge=1, le=1000, description="passes over all training captions")
    # the rest of the recipe
    num_layers: int = Field(1, ge=1, le=4, description="LSTM layers")
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout on inputs and outputs")
    grad_clip: float = Field(5.0, gt=0, le=1000, description="clip gradient norm to this")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="cross-entropy label smoothing")
    # At most 1: with learning_rate <= 1 a step never shrinks a weight past zero (the decay
    # flips signs and grows without bound beyond that).
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay")
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
    max_len: int = Field(
        20,
        ge=2,
        le=100,
        description="longest training caption in words (also decoding's, unless decode.max_len "
        "is given)",
    )
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
    decode: DecodeConfig = Field(
        default_factory=DecodeConfig, description="how captions are searched"
    )
    # machinery
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    workers: int = Field(1, ge=0, le=64, description="image-loading processes for features")
    cache_dir: Path | None = Field(None, description="feature cache (default ~/.cache/captioner)")

    @model_validator(mode="before")
    @classmethod
    def _nest_decoding(cls, data: object) -> object:
        # Presets, config files, the web form and older bundles/checkpoints give decoding
        # settings flat (beam_size = 5); they live in `decode`.
        if isinstance(data, dict):
            return nest_decoding(data)
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _whole_number(cls, value: object, info: ValidationInfo) -> object:
        # pydantic's own words for 1e308 in a whole-number field are "unable to parse input
        # string"; say what to give instead.
        field = cls.model_fields[info.field_name]
        if (
            field.annotation is int
            and isinstance(value, float)
            and not (math.isfinite(value) and abs(value) < 2**53)
        ):
            low, high = _bounds(field)
            raise ValueError(f"{value!r} is out of range: give a whole number from {low} to {high}")
        return value

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        if value not in ENCODERS:
            raise ValueError(f"unknown encoder {value!r}; choose one of {', '.join(ENCODERS)}")
        return value

    @field_validator("decoder")
    @classmethod
    def _known_decoder(cls, value: str) -> str:
        if value not in DECODERS:
            raise ValueError(f"unknown decoder {value!r}; choose one of {', '.join(DECODERS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.class_evidence and not DECODERS[self.decoder].class_evidence:
            able = [k for k, s in DECODERS.items() if s.class_evidence]
            raise ValueError(f"class_evidence needs decoder = {' or '.join(able)}")
        for name in ("class_guidance", "class_constraint", "open_vocabulary", "tag_agreement"):
            if getattr(self.decode, name) and not self.class_evidence:
                raise ValueError(f"decode.{name} needs class_evidence (a class head)")
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
        if self.decode.rerank_neighbours and self.finetune_encoder:
            raise ValueError(
                "rerank_neighbours indexes the training photos' cached features: it cannot be "
                "combined with finetune_encoder (set rerank_neighbours = 0)"
            )
        return self

    def fingerprint(self) -> dict:
        """Settings a checkpoint must agree with to be resumed (not epochs or machinery).
        Settings added later are left out at their defaults, so older runs still resume."""
        # Epoch counts may change: a finished run can be extended, e.g. with SCST epochs.
        # Decoding never changes the weights, so a run can be resumed with other decoding.
        skip = {"epochs", "scst_epochs", "device", "workers", "cache_dir", "decode"}
        dump = self.model_dump(mode="json", exclude=skip)
        return {
            k: v
            for k, v in dump.items()
            if k not in _LATER or v != TrainConfig.model_fields[k].default
        }


def _bounds(info: FieldInfo) -> tuple[object, object]:
    """A numeric field's (lowest, highest) allowed values, from its ge/gt/le/lt limits."""
    low = high = None
    for m in info.metadata:
        low = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else low
        high = getattr(m, "le", None) if getattr(m, "le", None) is not None else high
    return low, high


def nest_decoding(data: dict) -> dict:
    """Settings with decoding's fields given flat (beam_size = 5) moved into `decode`; a flat
    max_len is training's and also decoding's unless decode sets its own (one field before)."""
    flat = {k: data[k] for k in DecodeConfig.model_fields if k in data and k != "max_len"}
    if not flat and "max_len" not in data:
        return data
    nested = data.get("decode") or {}
    if isinstance(nested, DecodeConfig):
        nested = nested.model_dump()
    if not isinstance(nested, dict):
        return data  # let validation say what is wrong
    decode = {**flat, **nested}
    if "max_len" in data and "max_len" not in decode:
        decode["max_len"] = data["max_len"]
    return {**{k: v for k, v in data.items() if k not in flat}, "decode": decode}


def flat_schema() -> dict:
    """TrainConfig's JSON schema with decoding's fields flat beside the others (as the web form
    and job bodies send them; validation nests them)."""
    schema = TrainConfig.model_json_schema()
    props = schema["properties"]
    props.pop("decode", None)
    schema.pop("$defs", None)
    for name, prop in DecodeConfig.model_json_schema()["properties"].items():
        props.setdefault(name, prop)  # max_len stays training's
    return schema


def setting_names() -> set[str]:
    """Every name a settings file, the web form or a job body may use (decoding's flat too)."""
    return set(TrainConfig.model_fields) | set(DecodeConfig.model_fields)


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
    layers = [preset_values(preset) if preset else {}, load_config_file(file) if file else {}]
    layers.append({k: v for k, v in overrides.items() if v is not None})
    data: dict = {}
    for layer in layers:  # decoding merges field by field too
        layer = nest_decoding(dict(layer))
        given = layer.pop("decode", {})
        if not isinstance(given, dict):
            raise ConfigError("decode: expected a table of decoding settings, e.g. [decode]")
        decode = {**data.get("decode", {}), **given}
        data.update(layer)
        if decode:
            data["decode"] = decode
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        raise ConfigError(
            validation_message(exc, f"training settings{f' in {file}' if file else ''}")
        ) from None
