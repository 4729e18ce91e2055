"""`DecodeConfig`: how captions are searched, shared by training's dev scoring, the bundle, the
Python API, the HTTP API and the CLI. Torch-free, so the config stage can import it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..core.errors import ConfigError, validation_message

MAX_ALTERNATIVES = 20  # n best captions per photo, on every interface


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
    open_vocabulary: bool = Field(
        False,
        description="the words of the encoder's ImageNet classes that no training caption used "
        "(zebra, teddy, burger) can be said where a close word would go (zebra for horse), as "
        "much as the classifier sees them; models with class evidence only",
    )
    tag_agreement: bool = Field(
        False,
        description="never name an animal, vehicle or food that no tag supports when a "
        "confident tag (>= 0.5) names another of the same kind; models with class evidence only",
    )
    class_constraint: float = Field(
        0.0,
        ge=0,
        le=1,
        description="the caption must name what the encoder's ImageNet classifier sees with at "
        "least this probability (a word whose classes sum to it; constrained beam search); "
        "models with class evidence only (0 = off)",
    )
    rerank_neighbours: int = Field(
        0,
        ge=0,
        le=100,
        description="consult this many most similar training photos: rerank the beam's captions "
        "by their agreement (CIDEr-D) with those photos' captions (0 = off; models with a "
        "neighbour index only)",
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

    @model_validator(mode="after")
    def _neighbours_given(self) -> DecodeConfig:
        # Both read the rerank_neighbours nearest photos: without them they would do nothing.
        if not self.rerank_neighbours and (self.neighbour_guidance or self.rerank_precision):
            raise ValueError(
                "neighbour_guidance and rerank_precision use the rerank_neighbours most similar "
                "training photos: set rerank_neighbours > 0, or set both to 0"
            )
        return self

    def resolve(self, **overrides: object) -> DecodeConfig:
        """This config with the given (non-None) settings replaced, validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        unknown = sorted(set(given) - set(DecodeConfig.model_fields))
        if unknown:
            raise ConfigError(f"unknown decoding settings: {', '.join(unknown)}")
        try:
            return DecodeConfig(**{**self.model_dump(), **given})
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "decoding settings")) from None

    @classmethod
    def from_saved(cls, data: dict | None) -> DecodeConfig:
        """A bundle's saved decoding block (unknown keys from newer versions are ignored)."""
        data = data or {}
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})


def check_alternatives(alternatives: int) -> int:
    """The n best captions asked for, 1..MAX_ALTERNATIVES (the same limit everywhere)."""
    if not isinstance(alternatives, int) or not 1 <= alternatives <= MAX_ALTERNATIVES:
        raise ConfigError(
            f"alternatives must be a whole number from 1 to {MAX_ALTERNATIVES}, "
            f"not {alternatives!r}"
        )
    return alternatives
