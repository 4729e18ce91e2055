"""The project's error hierarchy. Every error a user can cause or fix is a `CaptionerError`
whose message says what is wrong and how to fix it; the CLI prints it on one line and the
server turns it into a JSON `{"detail": ...}` answer."""

from __future__ import annotations


class CaptionerError(Exception):
    """A known, user-fixable problem; the message names the fix."""


class ConfigError(CaptionerError, ValueError):
    """A config file or value is invalid; the message names the field and the fix."""


class DatasetError(CaptionerError, ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""


class DownloadError(CaptionerError, RuntimeError):
    """A download failed or a file did not verify."""


class EncoderUnavailable(CaptionerError, RuntimeError):
    """The encoder's weights cannot be loaded here; the message says how to fix it."""


class ImageError(CaptionerError, OSError):
    """An image file cannot be read or decoded."""


class BundleError(CaptionerError, ValueError):
    """A model folder is missing, incomplete or inconsistent; the message says what and why."""


class CheckpointError(CaptionerError, ValueError):
    """A training checkpoint is unreadable or belongs to another run."""


class TrainingError(CaptionerError, RuntimeError):
    """Training cannot start or continue as asked."""


class ScoringError(CaptionerError, RuntimeError):
    """Captions cannot be scored here (e.g. Java is missing)."""


class ModelNotFound(CaptionerError, LookupError):
    """No model with that id in the model store."""


class ModelProtected(CaptionerError, PermissionError):
    """The model cannot be changed or deleted (bundled, or given on the command line)."""


class DataPathError(CaptionerError, PermissionError):
    """A path given to the server lies outside its data folders (--data-root)."""


class ImageTooLarge(ImageError):
    """An image costs more to decode than the limits allow (CAPTIONER_MAX_PIXELS, the memory
    of a full-size decode, a slow decoder's pixel cap, CPU time); checked from the file's
    header before anything is decoded, except CPU time."""


class ImageFormatRefused(ImageError):
    """A readable image in a format that is not an accepted photo format (JPEG 2000, ICO,
    DDS...); the message lists the accepted ones."""


class DecodeBusy(CaptionerError, RuntimeError):
    """Images already being decoded use the whole memory budget and none was freed in time
    (the server answers 503: retry shortly)."""


class NoClassHead(CaptionerError, LookupError):
    """The encoder has no ImageNet classifier head, so it cannot name classes in an image."""


def validation_message(exc: Exception, what: str) -> str:
    """A pydantic ValidationError as "invalid WHAT:" and one line per field."""
    lines = [f"  {'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()]
    return f"invalid {what}:\n" + "\n".join(lines)
