"""Display names of models ("Flickr8k attention, 20 epochs"): given to a training job or set
later on the Models page. A model's id (its folder) never changes; its name lives beside the
bundle in ``name.json`` (written atomically; plain JSON, never unpickled), so it travels with
the model's folder and its zip download."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..core.atomic import write_json
from ..core.errors import ConfigError

NAME_FILE = "name.json"
MAX_LEN = 64
# Letters and digits of any script, spaces and a little punctuation; no slashes, quotes that
# break HTML attributes, control characters or markup.
_NAME = re.compile(r"[\w .,()+#&'-]+")


def check_name(value: object) -> str | None:
    """The cleaned name (surrounding spaces dropped, inner runs collapsed), None for no name, or
    ConfigError saying what is allowed."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError("name: give the model's name as text")
    name = " ".join(value.split())
    if not name:
        return None
    if len(name) > MAX_LEN:
        raise ConfigError(f"name: at most {MAX_LEN} characters (this one has {len(name)})")
    if not _NAME.fullmatch(name) or not name[0].isalnum():
        raise ConfigError(
            "name: use letters, digits, spaces and . , ( ) + # & ' - only, "
            "starting with a letter or digit"
        )
    return name


def read_name(model_dir: Path) -> str | None:
    """The model's name, or None (no name file, or one that is not a valid name)."""
    try:
        data = json.loads((Path(model_dir) / NAME_FILE).read_text(encoding="utf-8"))
        return check_name(data.get("name")) if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_name(model_dir: Path, name: str | None) -> None:
    """Set (or with None, remove) the model's name; atomic: temp file, then rename."""
    path = Path(model_dir) / NAME_FILE
    if name is None:
        path.unlink(missing_ok=True)
    else:
        write_json(path, {"name": name})
