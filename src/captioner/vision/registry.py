"""The encoder registry as plain data (no torch import), so configs, the CLI's --help and the
web form can list and check encoders without loading PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import ConfigError


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    family: str  # "efficientnet_lite" or "resnet": how vision.encoders builds it
    variant: int  # lite 0/2, resnet depth 50/101
    image_size: int
    feature_dim: int
    # Mean/std on 0..255 RGB, so both EfficientNet-Lite's (x-127)/128 and torchvision's
    # ImageNet normalisation are one formula.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_id: str  # goes into the feature-cache key


IMAGENET_CLASSES = 1000  # every encoder's head: ImageNet-1k (vision.classes)

_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)

ENCODERS: dict[str, EncoderSpec] = {
    "efficientnet_lite0": EncoderSpec(
        "efficientnet_lite0",
        "efficientnet_lite",
        0,
        224,
        1280,
        _LITE_MEAN,
        _LITE_STD,
        "efficientnet-lite0-57934424",
    ),
    "efficientnet_lite1": EncoderSpec(
        "efficientnet_lite1",
        "efficientnet_lite",
        1,
        240,
        1280,
        _LITE_MEAN,
        _LITE_STD,
        "efficientnet-lite1-77cc7160",
    ),
    "efficientnet_lite2": EncoderSpec(
        "efficientnet_lite2",
        "efficientnet_lite",
        2,
        260,
        1280,
        _LITE_MEAN,
        _LITE_STD,
        "efficientnet-lite2-9656183e",
    ),
    "resnet50": EncoderSpec(
        "resnet50",
        "resnet",
        50,
        224,
        2048,
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        "torchvision-resnet50-IMAGENET1K_V1",
    ),
    "resnet101": EncoderSpec(
        "resnet101",
        "resnet",
        101,
        224,
        2048,
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        "torchvision-resnet101-IMAGENET1K_V1",
    ),
}


def get_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown encoder {name!r}; choose one of: {', '.join(sorted(ENCODERS))}"
        ) from None
