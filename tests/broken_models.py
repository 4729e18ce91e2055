"""Broken model folders, made from the bundled model in a moment (nothing committed): each way a
bundle can be wrong that once broke captioning, with the words its refusal must hold."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

from captioner.api import default_model_path

BIG = ("model.safetensors", "neighbours.safetensors", "neighbours.json")


def copy_model(dst: Path, link_big: bool = True) -> Path:
    """The bundled model at `dst`; its big files linked (unchanged) unless link_big=False."""
    dst.mkdir(parents=True)
    for f in default_model_path().iterdir():
        if link_big and f.name in BIG:
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy2(f, dst / f.name)
    return dst


def _config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        change(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))

    return apply


def _tensor(file: str, name: str, value: float) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        path = folder / file
        tensors = load_file(path)
        path.unlink()  # a link to the bundled file: write a copy, never through the link
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value
        save_file(tensors, path)

    return apply


def _remove(*names: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        for name in names:
            (folder / name).unlink()

    return apply


# name -> (how it is broken, what the refusal says, caught when listed: no weights read)
BROKEN: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "decoding-fast": (
        _config(lambda c: c.update(decoding="fast")),
        "'decoding' must be an object of settings, not 'fast'",
        True,
    ),
    "hidden-60000": (
        _config(lambda c: c["model"].update(hidden_size=60000)),
        "model.safetensors does not match config.json: ",
        True,
    ),
    "model-a-list": (
        _config(lambda c: c.update(model=[1, 2])),
        "'model' must be an object of settings",
        True,
    ),
    "dropout-text": (
        _config(lambda c: c["model"].update(dropout="lots")),
        "config.json: model.dropout: Input should be a valid number",
        True,
    ),
    "beam-0": (
        _config(lambda c: c["decoding"].update(beam_size=0)),
        "config.json: decoding.beam_size: Input should be greater than or equal to 1",
        True,
    ),
    "decoder-unknown": (
        _config(lambda c: c["model"].update(kind="transformer")),
        "unknown decoder 'transformer'",
        True,
    ),
    "encoder-a-list": (_config(lambda c: c.update(encoder=[])), "unknown encoder []", True),
    "weights-nan": (
        _tensor("model.safetensors", "out.weight", math.nan),
        "model.safetensors holds infinite or NaN values (out.weight)",
        False,
    ),
    "weights-inf": (
        _tensor("model.safetensors", "embed.weight", math.inf),
        "model.safetensors holds infinite or NaN values (embed.weight)",
        False,
    ),
    "neighbours-nan": (
        _tensor("neighbours.safetensors", "vectors", math.nan),
        "neighbours.safetensors holds infinite or NaN values (vectors)",
        False,
    ),
    # Its saved decoding reranks by neighbours, so every caption request would fail.
    "neighbours-gone": (
        _remove("neighbours.safetensors", "neighbours.json"),
        "its decoding settings do not fit: rerank_neighbours needs",
        False,
    ),
}


def make_broken(folder: Path, name: str) -> Path:
    copy_model(folder)
    BROKEN[name][0](folder)
    return folder
