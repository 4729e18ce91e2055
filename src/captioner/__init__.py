"""captioner: small, fast Show-and-Tell image captioning."""

__version__ = "0.1.0"

from .api import Captioner, default_model_path  # noqa: E402

__all__ = ["Captioner", "default_model_path", "__version__"]
