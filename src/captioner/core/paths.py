"""Default folders. Environment variables override them, so tests and servers never touch a
user's home by accident."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Feature caches and exported ONNX encoders (`CAPTIONER_CACHE`, else ~/.cache/captioner)."""
    env = os.environ.get("CAPTIONER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "captioner"


def default_state_dir() -> Path:
    """The web app's models, jobs and runs (`CAPTIONER_STATE`, else ~/.local/share/captioner)."""
    env = os.environ.get("CAPTIONER_STATE")
    return Path(env) if env else Path.home() / ".local" / "share" / "captioner"
