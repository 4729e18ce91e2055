"""Training checkpoints: tensors (model, best epoch's weights, optimiser state, RNG, any extra
trainable state such as a fine-tuned encoder) in safetensors, everything else in JSON. Written
atomically; a corrupt or foreign checkpoint gives a one-line error naming the folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.atomic import atomic_dir
from ..core.errors import CheckpointError

TENSORS = "state.safetensors"
META = "state.json"


@dataclass
class Checkpoint:
    meta: dict  # epoch, best, history, elapsed, fingerprint
    best_state: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. encoder.* weights


def exists(path: Path) -> bool:
    return (Path(path) / META).exists()


def read_meta(path: Path) -> dict:
    """The JSON half alone (to check the fingerprint before building anything)."""
    file = Path(path) / META
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("expected a JSON object")
        return meta
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"{file} is unreadable ({exc}); delete {Path(path)} to start the run over"
        ) from None


def save_checkpoint(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    best_state: dict[str, torch.Tensor],
    meta: dict,
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    with atomic_dir(path) as tmp:
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
        }
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
        tensors.update(extra or {})
        osd = opt.state_dict()
        for idx, st in osd["state"].items():
            for name, v in st.items():
                tensors[f"optim.{idx}.{name}"] = v.detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / TENSORS))
        (tmp / META).write_text(
            json.dumps({**meta, "param_groups": osd["param_groups"]}, indent=2) + "\n",
            encoding="utf-8",
        )


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> Checkpoint:
    """Restore model, optimiser and RNG in place; return the rest. Tensors under prefixes other
    than model/best/optim/rng come back in `extra` for their owner to load."""
    path = Path(path)
    meta = read_meta(path)
    try:
        tensors = load_file(str(path / TENSORS))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
        torch.set_rng_state(tensors["rng.torch"])
    except Exception as exc:  # safetensors, torch and KeyError all mean "not this run's state"
        raise CheckpointError(
            f"{path / TENSORS} cannot be restored ({str(exc)[:200]}); delete "
            f"{path} to start the run over"
        ) from None
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    known = ("model.", "best.", "optim.", "rng.")
    extra = {k: v for k, v in tensors.items() if not k.startswith(known)}
    return Checkpoint(meta, best, extra)
