"""`captioner evaluate --html`: the evaluation report as one self-contained HTML page.

The page holds the score table (every metric of the report, mean caption length against the
references', model, decoding settings, dataset and split) and every photo with its caption,
its references and its own CIDEr-D, worst first, so a person sees where the model fails.

Self-contained: photos are small JPEG thumbnails in data: URIs, the CSS is inline, there is no
script, and a Content-Security-Policy forbids every request, so the file opens offline and
from anywhere. Every caption, reference and path is HTML-escaped. Thumbnails decode through
`vision.images.open_image` (bounded work for any file); an unreadable photo gets a placeholder
and the reason, never a failed report.

Per-image CIDEr-D is `cider.CiderD` with document frequencies from the references of the
evaluated images (as pycocoevalcap computes them over the images it scores) and captioner's
tokenizer; the table's CIDEr is pycocoevalcap's with the PTB tokenizer, so the mean of the
per-image values differs from it slightly (bundled model, Flickr8k dev: 0.5484 vs 0.5468).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.atomic import atomic_write
from ..core.errors import CaptionerError, ConfigError, ScoringError
from ..data.cider import CiderD
from ..data.vocab import tokenize
from ..vision.images import open_image

THUMB_SIZE = 160  # longest side of a thumbnail, in pixels
THUMB_QUALITY = 70  # JPEG quality: ~5-8 KB per photo, ~10 MB for 1,000 photos

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: .3em .8em .3em 0; }
th { white-space: nowrap; }
table.scores td.num, table.photos td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.photos { width: 100%; }
table.photos > tbody > tr { border-top: 1px solid #ddd; }
table.photos td { padding: .6em .8em .6em 0; }
.thumb { width: 160px; }
.thumb img { display: block; max-width: 160px; max-height: 160px; border-radius: 3px; }
.missing { width: 160px; height: 120px; display: flex; align-items: center;
           justify-content: center; background: #eee; color: #888; border-radius: 3px; }
.caption { font-size: 1.1em; font-weight: 600; }
.refs { margin: .3em 0 0; padding-left: 1.2em; color: #555; }
.path, .note { color: #777; font-size: .85em; word-break: break-all; }
.note { color: #a33; }
.low { color: #a33; } .mid { color: #a60; } .high { color: #282; }
"""


def per_image_cider(captions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """CIDEr-D of captions[i] against references[i], with df from all of `references` (the
    evaluated images' references, as pycocoevalcap does) and captioner's tokenizer: (N,)."""
    if len(captions) != len(references):
        raise ScoringError(f"{len(captions)} captions but {len(references)} reference sets")
    if not captions:
        return np.zeros(0, dtype=np.float64)
    cider = CiderD([[tokenize(r) for r in refs] for refs in references])
    return cider.score([tokenize(c) for c in captions], np.arange(len(captions)))


def thumbnail_uri(
    path: str | Path, size: int = THUMB_SIZE, quality: int = THUMB_QUALITY
) -> tuple[str | None, str | None]:
    """A photo as a JPEG data: URI, longest side `size`: (uri, None), or (None, reason) when
    the file cannot be read (missing, not an image, over the pixel limit)."""
    try:
        im = open_image(path, size)
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality, optimize=True)
    except (CaptionerError, OSError, ValueError) as exc:
        return None, str(exc) or type(exc).__name__
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    if isinstance(value, float) and not math.isfinite(value):
        return _e(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _band(score: float) -> str:
    return "low" if score < 0.3 else "mid" if score < 1.0 else "high"


def _summary(report: dict, cider: np.ndarray) -> list[str]:
    metrics = report.get("metrics") or {}
    out = ["<h2>Scores</h2>", '<table class="scores"><tbody>']
    for name, value in metrics.items():
        out.append(f'<tr><th>{_e(name)}</th><td class="num">{_num(value)}</td></tr>')
    if "mean_length" in report:
        ref = report.get("reference_mean_length")
        ref_text = f" (references {_num(ref, 2)})" if ref is not None else ""
        out.append(
            f'<tr><th>mean length</th><td class="num">{_num(report["mean_length"], 2)}</td>'
            f"<td>words{ref_text}</td></tr>"
        )
    if len(cider):
        low = int((cider < 0.1).sum())
        out.append(
            f'<tr><th>per-image CIDEr-D</th><td class="num">{float(cider.mean()):.4f}</td>'
            f"<td>mean of the values below (captioner's tokenizer); median "
            f"{float(np.median(cider)):.4f}; {low} of {len(cider)} under 0.1</td></tr>"
        )
    out.append("</tbody></table>")

    rows: list[tuple[str, object]] = [("model", report.get("model", ""))]
    dataset = report.get("dataset") or {}
    if dataset:
        rows.append(("dataset", f"{dataset.get('format', '')} {dataset.get('path', '')}".strip()))
        rows.append(("split", dataset.get("split", "")))
    rows.append(("images", len(report.get("captions") or [])))
    decoding = report.get("decoding") or {}
    if decoding:
        rows.append(("decoding", ", ".join(f"{k} {v}" for k, v in decoding.items())))
    out.append("<h2>Run</h2>")
    out.append('<table class="run"><tbody>')
    for name, value in rows:
        out.append(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>")
    out.append("</tbody></table>")
    return out


def build_html(
    report: dict,
    references: Sequence[Sequence[str]],
    thumb_size: int = THUMB_SIZE,
    quality: int = THUMB_QUALITY,
) -> str:
    """The page for an `evaluate_model` report (plus the CLI's "dataset" entry, if any).
    references[i] are the reference captions of report["captions"][i]'s image."""
    items = report.get("captions") or []
    if len(items) != len(references):
        raise ScoringError(f"{len(items)} captions in the report but {len(references)} records")
    cider = per_image_cider([it["caption"] for it in items], references)
    order = sorted(range(len(items)), key=lambda i: (cider[i], i))  # worst first, stable

    model = report.get("model", "")
    split = (report.get("dataset") or {}).get("split")
    title = f"captioner evaluation: {Path(str(model)).name or model}" + (
        f", {split} split" if split else ""
    )
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    out += _summary(report, cider)
    out.append(f"<h2>Every photo, worst CIDEr-D first ({len(items)})</h2>")
    out.append('<table class="photos">')
    out.append(
        "<thead><tr><th>#</th><th>photo</th><th>CIDEr-D</th>"
        "<th>caption and references</th></tr></thead><tbody>"
    )
    for rank, i in enumerate(order, 1):
        item, score = items[i], float(cider[i])
        uri, problem = thumbnail_uri(item["image"], thumb_size, quality)
        if uri is not None:
            photo = f'<img src="{uri}" alt="{_e(item["caption"])}">'
        else:
            photo = '<div class="missing">no preview</div>'
        note = f'<div class="note">{_e(problem)}</div>' if problem else ""
        refs = "".join(f"<li>{_e(r)}</li>" for r in references[i])
        out.append(
            f'<tr id="img-{i}"><td class="num">{rank}</td>'
            f'<td class="thumb">{photo}</td>'
            f'<td class="num {_band(score)}">{score:.3f}</td>'
            f'<td><div class="caption">{_e(item["caption"])}</div>'
            f'<ol class="refs">{refs}</ol>'
            f'<div class="path">{_e(item["image"])}</div>{note}</td></tr>'
        )
    out.append("</tbody></table></body></html>\n")
    return "\n".join(out)


def write_html(
    path: str | Path,
    report: dict,
    references: Sequence[Sequence[str]],
    thumb_size: int = THUMB_SIZE,
    quality: int = THUMB_QUALITY,
) -> Path:
    """Build the page and write it atomically (temp file, then rename)."""
    path = Path(path)
    page = build_html(report, references, thumb_size, quality)
    try:
        with atomic_write(path) as fh:
            fh.write(page)
    except OSError as exc:
        raise ConfigError(
            f"--html {path}: cannot write there ({exc.strerror or exc}); choose another file"
        ) from None
    return path
