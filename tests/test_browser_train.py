"""The Train and Models pages in headless Chromium (Playwright): the dataset picker fills the
form, a tiny named job shows its phases (feature extraction with counts and speed) and charts,
the running job shows on /train without ?job=, and a model is named and renamed."""

from __future__ import annotations

import shutil

import httpx
import pytest
from conftest import serve_in_thread
from test_browser import CHROMIUM
from test_datasets_api import make_flickr8k

pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM) and not __import__("os").path.exists(CHROMIUM),
    reason="Chromium not installed (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def live(tmp_path_factory, photo_dir, captions_csv):
    from captioner.serving.server import ServerSettings, create_app

    tmp = tmp_path_factory.mktemp("live-train")
    data = tmp / "data"
    shutil.copytree(captions_csv.parent, data / "photos")  # new paths: features not cached
    (data / "flickr8k").symlink_to(make_flickr8k(tmp / "elsewhere" / "flickr8k", photo_dir))
    app = create_app(ServerSettings(state_dir=tmp / "state", data_roots=[data]))
    with serve_in_thread(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def page(live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_context().new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def pick(page, path: str) -> None:
    """Choose the picker's entry for `path` (option labels start with the path)."""
    page.wait_for_selector("#dataset-picker option:nth-child(2)", state="attached")
    value = page.evaluate(
        "p => [...document.querySelectorAll('#dataset-picker option')]"
        ".find(o => o.textContent.startsWith(p + ' ')).value",
        path,
    )
    page.select_option("#dataset-picker", value)


def test_the_dataset_picker_fills_path_and_format(live, page):
    page.goto(live + "/train")
    page.wait_for_selector("#form:not([aria-busy])")
    labels = page.locator("#dataset-picker option").all_inner_texts()
    assert any(t.startswith("flickr8k — flickr8k, 4 images, 8 captions (linked)") for t in labels)
    pick(page, "flickr8k")
    assert page.input_value("input[name=dataset_path]") == "flickr8k"
    assert page.input_value("select[name=dataset_format]") == "flickr8k"
    pick(page, "photos/captions.csv")
    assert page.input_value("input[name=dataset_path]") == "photos/captions.csv"
    assert page.input_value("select[name=dataset_format]") == "captions"


def test_a_named_job_shows_every_phase_and_its_model_can_be_renamed(live, page):
    page.goto(live + "/train")
    page.wait_for_selector("#form:not([aria-busy])")
    pick(page, "photos/captions.csv")
    page.fill("#model-name", "Four photos")
    settings = {"epochs": "2", "embed_size": "16", "hidden_size": "32", "batch_size": "4"}
    settings["vocab_threshold"] = "1"
    for name, value in settings.items():
        page.fill(f"input[name={name}]", value)
    page.click("#more summary")
    page.fill("input[name=workers]", "0")
    page.fill("input[name=beam_size]", "1")
    page.click("button[type=submit]")
    page.wait_for_selector("#job:not([hidden])")
    assert "Four photos" in page.locator("#job-title").inner_text()
    # The phases appear as they happen: features of the training images, counted.
    feats = page.locator("#phases li[data-phase=features]").first
    feats.wait_for(timeout=120_000)
    page.wait_for_function(
        "document.querySelector('#phases li[data-phase=features]')"
        ".textContent.includes('4 / 4 images')",
        timeout=120_000,
    )
    assert "train images" in feats.inner_text() and "images/s" in feats.inner_text()
    page.wait_for_function(
        "document.getElementById('job-state').textContent === 'done'", timeout=180_000
    )
    phases = page.locator("#phases li").evaluate_all("ls => ls.map(l => l.dataset.phase)")
    for phase in ("starting", "data", "vocab", "features", "train", "dev", "save"):
        assert phase in phases, phases
    # Both charts have axes with units; the dev chart has a line per metric.
    assert "loss (nats/word)" in page.locator("#curve").inner_html()
    assert "training step" in page.locator("#curve").inner_html()
    scores = page.locator("#scores")
    assert scores.locator("polyline").count() == 2 and "epoch" in scores.inner_html()
    assert "dev CIDEr" in scores.inner_html()
    # Past jobs: the progress column is complete, the name is shown.
    page.wait_for_function("document.querySelector('#jobs .job-progress').textContent === '100%'")
    assert "Four photos" in page.locator("#jobs").inner_text()

    page.goto(live + "/models")
    card = page.locator("li.card", has_text="Four photos")
    card.wait_for()
    assert "Dev scores" in card.inner_text() and "Training time" in card.inner_text()
    row = page.locator("#compare tbody tr", has_text="Four photos")
    assert row.count() == 1 and row.locator("td").count() >= 5
    assert page.locator("#compare tbody tr").count() >= 2  # beside the bundled model
    # The bundled model's weights are the mean of its last two epochs.
    assert "mean of 7–8" in page.locator("#compare").inner_text()
    card.locator("form.rename input").fill("Four photos, renamed")
    card.locator("form.rename button").click()
    page.wait_for_function(
        "document.getElementById('status').textContent.includes('Four photos, renamed')"
    )
    page.locator("li.card h2", has_text="Four photos, renamed").wait_for()  # re-rendered
    assert page.locator("#compare tbody tr", has_text="Four photos, renamed").count() == 1
    page.reload()  # persisted on the server
    page.locator("li.card h2", has_text="Four photos, renamed").wait_for()


def test_opening_train_shows_the_running_job(live, page):
    body = {
        "dataset_format": "captions",
        "dataset_path": "photos/captions.csv",
        "epochs": 1000,
        "embed_size": 16,
        "hidden_size": 32,
        "batch_size": 4,
        "vocab_threshold": 1,
        "workers": 0,
        "name": "long one",
    }
    job = httpx.post(live + "/api/jobs", json=body).json()
    try:
        page.goto(live + "/train")  # no ?job=
        page.wait_for_selector("#job:not([hidden])")
        page.wait_for_function(
            f"document.getElementById('job-title').textContent.includes('{job['id']}')"
        )
        assert "long one" in page.locator("#job-title").inner_text()
        # The Past jobs row of the running job updates by itself.
        row = page.locator(f"#jobs tr[data-job='{job['id']}'] .job-progress")
        first = row.inner_text()
        page.wait_for_function(
            f"document.querySelector(\"#jobs tr[data-job='{job['id']}'] .job-progress\")"
            f".textContent !== {first!r}",
            timeout=60_000,
        )
    finally:
        httpx.post(f"{live}/api/jobs/{job['id']}/stop", timeout=60)
