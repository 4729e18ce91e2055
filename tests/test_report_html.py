"""`captioner evaluate --html`: the self-contained report page, checked as HTML, in headless
Chromium from a file:// URL (no request may leave the page), and end to end through the CLI."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PHOTOS
from PIL import Image

from captioner.data.cider import CiderD
from captioner.data.vocab import tokenize
from captioner.evaluation.report_html import build_html, per_image_cider, write_html

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = 'a cup <script>alert("x")</script> & "saucer"'


def fixture_report(photo_dir: Path, tmp_path: Path) -> tuple[dict, list[list[str]]]:
    """A synthetic evaluate_model report over the real photos plus one unreadable file, with
    captions chosen so the per-image CIDEr-D values differ."""
    bad = tmp_path / "not <a> photo.jpg"
    bad.write_text("this is not a photo")
    names = list(PHOTOS)  # astronaut, coffee, chelsea, rocket
    captions = {
        "astronaut": PHOTOS["astronaut"],  # exact reference: the best
        "coffee": HOSTILE,
        "chelsea": "a dog runs on the beach",  # nothing in common: the worst
        "rocket": "a rocket on the launch pad",
    }
    items = [{"image": str(photo_dir / f"{n}.jpg"), "caption": captions[n]} for n in names]
    refs = [[PHOTOS[n], f"a photo of a {n}"] for n in names]
    items.append({"image": str(bad), "caption": "a broken <b>file</b>"})
    refs.append(["nothing to see here", "an <i>empty</i> file"])
    report = {
        "model": str(tmp_path / "models" / "tiny & <odd>"),
        "decoding": {"beam_size": 3, "max_len": 20, "length_penalty": 1.0},
        "metrics": {"BLEU-1": 0.61, "BLEU-4": 0.2, "METEOR": 0.19, "ROUGE-L": 0.44, "CIDEr": 0.55},
        "mean_length": 8.25,
        "reference_mean_length": 9.5,
        "captions": items,
        "dataset": {"format": "captions", "path": "data/x.csv", "split": "dev", "images": 5},
    }
    return report, refs


def rows_of(page: str) -> list[tuple[int, float, str]]:
    """(original index, CIDEr-D shown, caption as escaped) of each photo row, in page order."""
    return [
        (int(i), float(s), c)
        for i, s, c in re.findall(
            r'<tr id="img-(\d+)">.*?<td class="num \w+">([\d.]+)</td>'
            r'<td><div class="caption">(.*?)</div>',
            page,
            flags=re.S,
        )
    ]


def test_page_lists_every_photo_worst_first_with_its_own_cider(photo_dir, tmp_path):
    report, refs = fixture_report(photo_dir, tmp_path)
    page = build_html(report, refs)
    rows = rows_of(page)
    assert sorted(i for i, _, _ in rows) == list(range(len(refs)))
    shown = [s for _, s, _ in rows]
    assert shown == sorted(shown)  # worst first
    assert rows[-1][0] == 0  # the caption equal to a reference is the best

    # Per-image CIDEr-D is CiderD recomputed with df from the evaluated references.
    captions = [it["caption"] for it in report["captions"]]
    expected = CiderD([[tokenize(r) for r in rs] for rs in refs]).score(
        [tokenize(c) for c in captions], range(len(captions))
    )
    np.testing.assert_allclose(per_image_cider(captions, refs), expected, rtol=0, atol=1e-12)
    # ... and pycocoevalcap's corpus CIDEr-D on the same tokens (it splits on spaces).
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(tokenize(c))] for i, c in enumerate(captions)}
    _, official = Cider().compute_score(gts, res)
    np.testing.assert_allclose(expected, official, rtol=0, atol=1e-12)
    for i, s, _ in rows:
        assert s == pytest.approx(expected[i], abs=5e-4)  # shown with 3 decimals
    assert len(set(np.round(expected, 6))) > 2  # the fixture really orders something

    # The score table: every metric, lengths, model, decoding, dataset and split.
    for name in report["metrics"]:
        assert f"<th>{name}</th>" in page
    assert "8.25" in page and "9.50" in page and "beam_size 3" in page
    assert html.escape(report["model"]) in page and "data/x.csv" in page and "dev" in page


def test_every_text_is_escaped(photo_dir, tmp_path):
    report, refs = fixture_report(photo_dir, tmp_path)
    page = build_html(report, refs)
    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    assert "<odd>" not in page and "not <a> photo" not in page
    assert html.escape(HOSTILE) in page  # shown as text, in the caption and the alt text
    assert f'alt="{html.escape(HOSTILE)}"' in page
    assert "an &lt;i&gt;empty&lt;/i&gt; file" in page


def test_thumbnails_are_small_jpegs_and_unreadable_photos_get_a_placeholder(photo_dir, tmp_path):
    report, refs = fixture_report(photo_dir, tmp_path)
    page = build_html(report, refs)
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == len(PHOTOS)
    for uri in uris:
        im = Image.open(io.BytesIO(base64.b64decode(uri)))
        assert im.format == "JPEG" and max(im.size) == 160 and len(uri) < 16_000
    bad_row = page[page.index('<tr id="img-4">') :].split("</tr>")[0]
    assert 'class="missing"' in bad_row and "<img" not in bad_row
    assert "cannot read image" in bad_row  # the reason, as a note
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page


def test_write_is_atomic_and_a_bad_path_is_a_one_line_error(photo_dir, tmp_path):
    from captioner.core.errors import ConfigError

    report, refs = fixture_report(photo_dir, tmp_path)
    out = write_html(tmp_path / "out" / "report.html", report, refs)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--html"):
        write_html(blocker / "report.html", report, refs)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed")
def test_report_opens_offline_in_chromium(photo_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    report, refs = fixture_report(photo_dir, tmp_path)
    path = write_html(tmp_path / "report.html", report, refs)
    requests, failed = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("console", lambda m: failed.append(m.text) if m.type == "error" else None)
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => i.complete && i.naturalWidth)"
            )
            scores = page.locator("table.scores th").all_inner_texts()
            photo_rows = page.locator("table.photos tbody tr").count()
            text = page.locator("table.photos").inner_text()
        finally:
            browser.close()
    assert requests and requests[0] == path.as_uri()  # the listener saw the page itself
    assert not [u for u in requests if u.startswith(("http:", "https:"))], requests
    assert not failed, failed
    assert len(widths) == len(PHOTOS) and all(w and w > 0 for w in widths), widths
    assert "CIDEr" in scores and "METEOR" in scores and "mean length" in scores
    assert photo_rows == len(refs)
    assert HOSTILE in text  # the script tag is text on the page


def test_evaluate_writes_the_html_report(captions_csv, tmp_path):
    """The real command on the bundled model and four photos (no ../shared data needed)."""
    if not shutil.which("java"):
        pytest.skip("Java is needed for METEOR and the PTB tokenizer (evaluate requires it)")
    out, js = tmp_path / "report.html", tmp_path / "report.json"
    res = subprocess.run(
        [sys.executable, "-m", "captioner", "evaluate"]
        + ["--dataset-format", "captions", "--dataset-path", str(captions_csv)]
        + ["--split", "dev", "--report", str(js), "--html", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert f"HTML report written to {out}" in res.stdout
    page, data = out.read_text(), json.loads(js.read_text())
    assert len(rows_of(page)) == len(PHOTOS) == page.count("data:image/jpeg;base64,")
    for item in data["captions"]:
        assert html.escape(item["caption"]) in page
    for name in data["metrics"]:
        assert f"<th>{name}</th>" in page
