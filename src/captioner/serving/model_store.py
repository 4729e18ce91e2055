"""The web app's models on disk: the bundled model, an optional model given with
`serve --model`, and every bundle under ``state_dir/models``; which one is the saved default;
loading them once and keeping them. Raises the project's errors (the server maps them to HTTP
answers) and reads bundles only through storage.bundle.

One bad model folder never breaks the service: it is listed as broken with its error (its config
and tensor shapes are checked when it is listed, the whole bundle when it is loaded: see
storage.bundle), a default that cannot be loaded falls back to the bundled model (with one logged
warning), and a failed load is remembered until the folder changes, never retried per request.

Loaded models are kept in a small LRU (`max_loaded`, the default model and its fallback never
evicted): each costs 50-100 MB, and anyone who may caption can name any model.

Errors that reach a request name no absolute server path (`public`): the folders are given as
the model's id, e.g. "models/<id>/config.json"; the server log has the full message."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from ..api import Captioner, default_model_path
from ..core.atomic import write_json
from ..core.errors import BundleError, CaptionerError, ModelNotFound, ModelProtected
from ..storage.bundle import read_summary
from .names import read_name, write_name

log = logging.getLogger(__name__)

BUNDLED_ID = "bundled"
CLI_ID = "custom"  # the model given with `serve --model`
# Whole-string match (fullmatch): with `$`, "evil\n" would pass.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_LOADED = 4  # models kept loaded (LRU), the default included


def valid_id(model_id: str) -> bool:
    return _ID.fullmatch(model_id) is not None


class ModelStore:
    """Lazily loaded, then kept (the `max_loaded` most recently used): one Captioner per id."""

    def __init__(
        self,
        models_dir: Path,
        prefs: Path,
        startup_model: Path | None = None,
        max_loaded: int = MAX_LOADED,
    ) -> None:
        self.dir = Path(models_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefs = Path(prefs)
        self.max_loaded = max(1, max_loaded)
        self.loaded: OrderedDict[str, Captioner] = OrderedDict()  # least recently used first
        # Load failures, so a broken folder is not re-read on every request; keyed by model id
        # with the folder's signature (a replaced or repaired folder is tried again).
        self.failed: dict[str, tuple[tuple, str]] = {}
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
        if not valid_id(model_id) or not (p / "config.json").is_file():
            raise ModelNotFound(f"no model {model_id!r}; GET /api/models lists them")
        return p

    def ids(self) -> list[str]:
        try:
            found = sorted(
                p.name
                for p in self.dir.iterdir()
                if p.is_dir()
                and valid_id(p.name)
                and p.name not in self.fixed
                and (p / "config.json").is_file()
            )
        except OSError as exc:  # an unreadable models folder still leaves the fixed models
            log.warning("cannot list %s: %s", self.dir, exc)
            found = []
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
        """The named model, or the default one (the bundled model if the default is broken)."""
        return self.resolve(model_id)[1]

    def resolve(self, model_id: str | None = None) -> tuple[str, Captioner]:
        """(the id of the model that will caption, its Captioner)."""
        if model_id:
            return model_id, self._load(model_id)
        chosen = self.default()
        try:
            return chosen, self._load(chosen)
        except CaptionerError:  # logged once, when the load failed
            if chosen == BUNDLED_ID:
                raise
            return BUNDLED_ID, self._load(BUNDLED_ID)

    def _signature(self, path: Path) -> tuple:
        try:
            st = path.stat()
            files = sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in path.iterdir())
            return (st.st_ino, st.st_mtime_ns, tuple(files))
        except OSError:
            return ()

    def _load(self, model_id: str) -> Captioner:
        """The loaded model, or BundleError (a path-free message). A failure is remembered with
        the folder's signature: the same broken folder is never loaded twice."""
        path = self.path(model_id)
        with self.lock:
            if model_id in self.loaded:
                self.loaded.move_to_end(model_id)
                return self.loaded[model_id]
            signature = self._signature(path)
            failed = self.failed.get(model_id)
            if failed is not None and failed[0] == signature:
                raise BundleError(self.public(failed[1]))
            try:
                cap = Captioner.load(path)
            except Exception as exc:  # whatever breaks, one bad folder must not break serving
                reason = str(exc) if isinstance(exc, CaptionerError | OSError) else repr(exc)
                message = f"model {model_id} cannot be loaded: {reason}"
                self.failed[model_id] = (signature, message)
                log.warning("%s%s", message, self._fallback_note(model_id))
                raise BundleError(self.public(message)) from None
            self.failed.pop(model_id, None)
            self.loaded[model_id] = cap
            self._evict()
            return cap

    def _fallback_note(self, model_id: str) -> str:
        if model_id == self.default() and model_id != BUNDLED_ID:
            return "; it is the default: captioning with the bundled model instead"
        return ""

    def _evict(self) -> None:
        """Drop the least recently used models past `max_loaded`, never the default (nor the
        bundled model while it stands in for a broken default). A request still captioning with
        a dropped model keeps it until it is done."""
        chosen = self.default()
        kept = {chosen, BUNDLED_ID} if chosen in self.failed else {chosen}
        for model_id in list(self.loaded):
            if len(self.loaded) <= self.max_loaded:
                break
            if model_id not in kept:
                del self.loaded[model_id]

    def public(self, message: str) -> str:
        """`message` without absolute server paths: a model folder becomes its id (stored
        models as models/<id>), for answers to anyone who has not shown the token."""
        named = [(self.dir, "models"), *((path, i) for i, path in self.fixed.items())]
        folders = {str(f): name for path, name in named for f in (path, path.resolve())}
        for folder in sorted(folders, key=len, reverse=True):  # /a/b/models before /a/b
            if Path(folder).is_absolute():  # a relative one ('m') could be any word
                message = message.replace(folder, folders[folder])
        return message

    def health(self) -> dict:
        """Whether the default model loads (loading it if needed), for the open /healthz: the
        error names no server path."""
        chosen = self.default()
        try:
            self._load(chosen)
            return {"default_model": chosen, "default_model_ok": True, "serving_model": chosen}
        except CaptionerError as exc:
            error = str(exc)
        try:  # what resolve() falls back to
            serving = BUNDLED_ID if chosen != BUNDLED_ID and self._load(BUNDLED_ID) else None
        except CaptionerError:
            serving = None
        return {
            "default_model": chosen,
            "default_model_ok": False,
            "default_model_error": error,
            "serving_model": serving,
        }

    def info(self, model_id: str, paths: bool = True) -> dict:
        """What the Models page shows. A model that cannot be read is listed with
        `broken: true` and its error rather than failing the whole list; paths=False gives
        the error without server paths (`public`)."""
        path = self.path(model_id)
        base = {
            "id": model_id,
            "name": read_name(path) if model_id not in self.fixed else None,
            "default": model_id == self.default(),
            "deletable": model_id not in self.fixed,
            "renamable": model_id not in self.fixed,
            "broken": False,
            "error": None,
        }
        shown = (lambda m: m) if paths else self.public
        try:
            summary = read_summary(path)  # config schema and tensor shapes checked
        except (CaptionerError, OSError) as exc:
            return base | {"broken": True, "error": shown(str(exc))}
        failed = self.failed.get(model_id)  # its weights failed to load earlier
        if failed is not None and failed[0] == self._signature(path):
            base |= {"broken": True, "error": shown(failed[1])}
        cfg, metrics = summary["config"], summary["metrics"]
        train = cfg.get("train", {}) if isinstance(cfg.get("train"), dict) else {}
        return base | {
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
                    "decoder",
                    "scst_epochs",
                    "finetune_encoder",
                )
            },
            "dev_scores": metrics.get("dev", {}),
            "dev_split": metrics.get("dev_split"),
            "beam_size": metrics.get("beam_size"),
            "best_epoch": metrics.get("best_epoch"),
            "averaged_epochs": metrics.get("averaged_epochs", 1),
            "train_seconds": metrics.get("train_seconds"),
            "size_bytes": summary["size_bytes"],
            "card": summary["card"],
        }

    def rename(self, model_id: str, name: str | None) -> None:
        """Set the model's display name (`names.check_name` first; None removes it). Its id,
        folder and everything that refers to it stay as they are."""
        if model_id in self.fixed:
            raise ModelProtected(f"model {model_id!r} is not the server's to rename")
        write_name(self.path(model_id), name)

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
            self.failed.pop(model_id, None)
        shutil.rmtree(path)

    def files(self, model_id: str) -> list[Path]:
        """The model folder's own files: a link (to /etc/shadow, say) is never followed."""
        folder = self.path(model_id)
        return sorted(f for f in folder.iterdir() if not f.is_symlink() and f.is_file())
