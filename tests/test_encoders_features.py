from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.core.errors import EncoderUnavailable, ImageError
from captioner.vision import encoders
from captioner.vision.encoders import Encoder
from captioner.vision.features import extract_features
from captioner.vision.images import resize_center_crop


@functools.cache
def lite0() -> Encoder:
    return Encoder("efficientnet_lite0")


def test_resize_keeps_aspect_then_centre_crops():
    im = Image.new("RGB", (400, 100), "white")
    im.paste((255, 0, 0), (0, 0, 150, 100))  # red left part is cropped away
    out = resize_center_crop(im, 50)
    assert out.size == (50, 50)
    assert np.asarray(out)[:, :, 1].min() > 200  # all white: the centre, not a squashed image


def test_pretrained_weights_recognise_a_real_photo(photo_dir):
    import torchvision

    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    enc = lite0()
    pixels = torch.from_numpy(enc.preprocess(Image.open(photo_dir / "coffee.jpg")))[None]
    with torch.inference_mode():
        x = (pixels.permute(0, 3, 1, 2).float() - enc.graph.mean) / enc.graph.std
        top = enc.graph.net.net(x).softmax(-1).topk(3).indices[0].tolist()
    # the classifier head is still inside the network; its top classes must fit the photo
    assert {"espresso", "cup", "coffee mug"} & {categories[i] for i in top}


def test_onnx_and_pytorch_give_the_same_features(photo_dir):
    enc = lite0()
    assert enc.session is not None, "onnxruntime should be used on CPU"
    batch = torch.from_numpy(
        np.stack([enc.preprocess(Image.open(p)) for p in sorted(photo_dir.glob("*.jpg"))])
    )
    fast = enc(batch)
    session, enc.session = enc.session, None
    try:
        slow = enc(batch)
    finally:
        enc.session = session
    assert fast.shape == (len(batch), 1280)
    assert torch.allclose(fast, slow, atol=1e-3)


def test_feature_cache_is_keyed_by_files_and_resumes(photo_dir, tmp_path):
    paths = sorted(photo_dir.glob("*.jpg"))
    cache = tmp_path / "cache"
    first = extract_features(paths, lite0(), cache_dir=cache, batch_size=2)
    assert first.shape == (len(paths), 1280) and len(list(cache.glob("*.npy"))) == 1
    again = extract_features(paths, lite0(), cache_dir=cache)
    assert np.array_equal(first, again) and len(list(cache.glob("*.npy"))) == 1
    # Changing one image file means new features, never the stale ones.
    changed = tmp_path / "astronaut.jpg"
    Image.open(paths[0]).transpose(Image.FLIP_LEFT_RIGHT).save(changed)
    other = extract_features([changed, *paths[1:]], lite0(), cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2
    assert not np.array_equal(other[0], first[0]) and np.array_equal(other[1:], first[1:])
    # An interrupted extraction (two of four done) continues from where it stopped.
    final = next(p for p in cache.glob("*.npy") if np.array_equal(np.load(p), first))
    partial = final.with_name(final.name.replace(".npy", ".partial.npy"))
    data = np.load(final)
    data[2:] = 0
    np.save(partial, data)
    partial.with_suffix(".json").write_text('{"done": 2}')
    final.unlink()
    resumed = extract_features(paths, lite0(), cache_dir=cache)
    assert np.allclose(resumed, first, atol=1e-2)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.jpg: cannot read image"):
        extract_features([bad], lite0(), cache_dir=tmp_path, workers=0)


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server serving tmp_path/www (stands in for the weights host)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_resnet_weights_download_failure_is_explained(http_server, tmp_path, monkeypatch):
    root, url = http_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setitem(encoders.RESNET_URLS, 50, f"{url}/resnet50-0676ba61.pth")
    with pytest.raises(
        EncoderUnavailable,
        match=r"HTTP Error 404.*place it at .*torch.*"
        r"resnet50-0676ba61\.pth",
    ):
        Encoder("resnet50")
    # A corrupted download fails the hash check instead of loading garbage.
    (root / "resnet50-0676ba61.pth").write_bytes(b"corrupt")
    with pytest.raises(EncoderUnavailable, match="resnet50"):
        Encoder("resnet50")


def test_resnet_weights_placed_in_the_cache_load_offline(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setitem(encoders.RESNET_URLS, 50, "http://127.0.0.1:9/resnet50-0676ba61.pth")
    target = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    target.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), target)
    enc = Encoder("resnet50", onnx=False)
    out = enc(torch.zeros(2, 224, 224, 3, dtype=torch.uint8))
    assert out.shape == (2, 2048)
