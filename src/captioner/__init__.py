"""captioner: small, fast Show-and-Tell image captioning.

`from captioner import Captioner` is resolved lazily, so `captioner --help` and importing the
config never load PyTorch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Captioner", "default_model_path", "__version__"]


def __getattr__(name: str):
    if name in ("Captioner", "default_model_path"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
