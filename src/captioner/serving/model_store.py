"""The web app's models on disk: the bundled model, an optional model given with
`serve --model`, and every bundle under ``state_dir/models``; which one is the saved default;
loading them once and keeping them. Raises the project's errors (the server maps them to HTTP
answers) and reads bundles only through storage.bundle."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

from ..api import Captioner, default_model_path
from ..core.atomic import write_json
from ..core.errors import BundleError, ModelNotFound, ModelProtected
from ..storage.bundle import read_summary

BUNDLED_ID = "bundled"
CLI_ID = "custom"  # the model given with `serve --model`
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelStore:
    """Lazily loaded, then kept: one Captioner per model id."""

    def __init__(self, models_dir: Path, prefs: Path, startup_model: Path | None = None) -> None:
        self.dir = Path(models_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefs = Path(prefs)
        self.loaded: dict[str, Captioner] = {}
        self.lock = threading.Lock()
        # `serve --model X` makes X the default of this server run only; the saved default
        # (chosen on the Models page) is left as it is.
        self.fixed: dict[str, Path] = {BUNDLED_ID: default_model_path()}
        self.startup_default: str | None = None
        if startup_model is not None:
            self.fixed[CLI_ID] = Path(startup_model)
            self.startup_default = CLI_ID

    def path(self, model_id: str) -> Path:
        if model_id in self.fixed:
            return self.fixed[model_id]
        p = self.dir / model_id
        if not _ID.match(model_id) or not (p / "config.json").is_file():
            raise ModelNotFound(f"no model {model_id!r}; GET /api/models lists them")
        return p

    def ids(self) -> list[str]:
        found = sorted(
            p.name
            for p in self.dir.iterdir()
            if p.is_dir()
            and _ID.match(p.name)
            and p.name not in self.fixed
            and (p / "config.json").is_file()
        )
        return [*self.fixed, *found]

    def saved_default(self) -> str:
        try:
            chosen = json.loads(self.prefs.read_text()).get("default_model", BUNDLED_ID)
        except (OSError, ValueError, AttributeError):
            chosen = BUNDLED_ID
        return chosen if chosen in self.ids() else BUNDLED_ID

    def default(self) -> str:
        return self.startup_default or self.saved_default()

    def set_default(self, model_id: str) -> None:
        """Check that the model loads, then save it as the default (and use it from now on)."""
        self.get(model_id)
        write_json(self.prefs, {"default_model": model_id})
        self.startup_default = None

    def get(self, model_id: str | None = None) -> Captioner:
        model_id = model_id or self.default()
        path = self.path(model_id)
        with self.lock:
            if model_id not in self.loaded:
                try:
                    self.loaded[model_id] = Captioner.load(path)
                except BundleError as exc:
                    raise BundleError(f"model {model_id} cannot be loaded: {exc}") from None
            return self.loaded[model_id]

    def info(self, model_id: str) -> dict:
        path = self.path(model_id)
        summary = read_summary(path)
        cfg, metrics = summary["config"], summary["metrics"]
        train = cfg.get("train", {})
        return {
            "id": model_id,
            "default": model_id == self.default(),
            "deletable": model_id not in self.fixed,
            "encoder": cfg.get("encoder"),
            "model": cfg.get("model"),
            "decoding": cfg.get("decoding"),
            "data": {k: train.get(k) for k in ("dataset_format", "dataset_path", "train_split")},
            "settings": {
                k: train.get(k)
                for k in (
                    "batch_size",
                    "vocab_threshold",
                    "embed_size",
                    "hidden_size",
                    "learning_rate",
                    "epochs",
                )
            },
            "dev_scores": metrics.get("dev", {}),
            "best_epoch": metrics.get("best_epoch"),
            "train_seconds": metrics.get("train_seconds"),
            "size_bytes": summary["size_bytes"],
            "card": summary["card"],
        }

    def delete(self, model_id: str) -> None:
        if model_id == BUNDLED_ID:
            raise ModelProtected("the bundled model cannot be deleted")
        if model_id in self.fixed:
            raise ModelProtected(
                f"model {model_id!r} was given with `captioner serve --model` "
                "and is not the server's to delete"
            )
        path = self.path(model_id)
        with self.lock:
            self.loaded.pop(model_id, None)
        shutil.rmtree(path)

    def files(self, model_id: str) -> list[Path]:
        return sorted(f for f in self.path(model_id).iterdir() if f.is_file())
