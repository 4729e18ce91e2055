"""End to end in headless Chromium (Debian's package), driven by Playwright: a person uploads
photos, reads captions, downloads the CSV, and trains a small model from the Train page."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from conftest import FLICKR, needs_flickr, serve_in_thread
from test_server import flickr_subset

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The real app on a free loopback port, served by Uvicorn in a thread."""
    from captioner.serving.server import ServerSettings, create_app

    root = tmp_path_factory.mktemp("live")
    (root / "data").mkdir()
    app = create_app(ServerSettings(state_dir=root / "state", data_roots=[root / "data"]))
    with serve_in_thread(app) as port:
        yield f"http://127.0.0.1:{port}", root / "data"


@pytest.fixture(scope="module")
def page(live):
    from playwright.sync_api import sync_playwright

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
        context = browser.new_context(accept_downloads=True)
        yield context.new_page()
        browser.close()


def test_upload_two_photos_see_captions_and_download_csv(live, page, photo_dir, tmp_path):
    base, _ = live
    page.goto(base + "/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#files", [str(photo_dir / "coffee.jpg"), str(photo_dir / "rocket.jpg")])
    page.wait_for_function(
        "document.querySelectorAll('.caption:not(.pending)').length === 2", timeout=60_000
    )
    captions = page.locator(".caption").all_inner_texts()
    assert len(captions) == 2 and all(len(c.split()) >= 3 for c in captions), captions
    alts = [page.locator(".card img").nth(i).get_attribute("alt") for i in range(2)]
    assert alts == captions  # the thumbnail's alt text is its caption
    assert "2 of 2 captioned" in page.locator("#status").inner_text()
    with page.expect_download() as download:
        page.click("#csv")
    saved = tmp_path / "captions.csv"
    download.value.save_as(saved)
    rows = list(csv.reader(saved.open()))
    assert rows[0] == ["image", "caption", "confidence", "tags"]
    assert [r[:2] for r in rows[1:]] == [["coffee.jpg", captions[0]], ["rocket.jpg", captions[1]]]
    assert 0 < float(rows[1][2]) < 1 and rows[1][3].startswith("espresso:")


def test_cards_show_tags_mark_low_confidence_and_can_be_removed(live, page, photo_dir, tmp_path):
    base, _ = live
    photos = [photo_dir / "coffee.jpg", photo_dir / "chelsea.jpg"]  # the model is unsure of both
    sure = FLICKR / "images" / "3265162450_5b4e3c5f1b.jpg"  # "three dogs playing in the snow"
    if sure.is_file():
        shutil.copy(sure, tmp_path / "dogs.jpg")
        photos.append(tmp_path / "dogs.jpg")
    page.goto(base + "/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#files", [str(p) for p in photos])
    page.wait_for_function(
        f"document.querySelectorAll('.caption:not(.pending)').length === {len(photos)}",
        timeout=60_000,
    )
    cards = page.locator(".card")
    coffee, cat = cards.nth(0), cards.nth(1)
    assert coffee.locator(".tag").first.inner_text().startswith("espresso")
    assert "cat" in cat.locator(".tags").inner_text()  # Egyptian cat, tiger cat, tabby
    for card in (coffee, cat):
        assert "low" in card.get_attribute("class").split()
        assert card.locator(".confidence").inner_text().startswith("Low confidence (0.")
    if len(photos) == 3:
        dogs = cards.nth(2)
        assert "low" not in dogs.get_attribute("class").split()
        shown = dogs.locator(".confidence").inner_text()
        assert shown.startswith("Confidence 0.") and float(shown.split()[1]) >= 0.34
    cat.get_by_role("button", name="Remove chelsea.jpg").click()
    assert page.locator(".card").count() == len(photos) - 1
    assert (
        f"{len(photos) - 1} of {len(photos) - 1} captioned" in page.locator("#status").inner_text()
    )
    with page.expect_download() as download:
        page.click("#csv")
    saved = tmp_path / "captions.csv"
    download.value.save_as(saved)
    assert [r[0] for r in csv.reader(saved.open())][1:] == [
        p.name for p in photos if p.stem != "chelsea"
    ]
    page.click("#clear")


def test_pick_a_whole_folder(live, page, photo_dir, tmp_path):
    base, _ = live
    folder = tmp_path / "holiday"
    (folder / "day2").mkdir(parents=True)
    shutil.copy(photo_dir / "rocket.jpg", folder / "photo10.jpg")
    shutil.copy(photo_dir / "coffee.jpg", folder / "photo2.jpg")
    shutil.copy(photo_dir / "chelsea.jpg", folder / "day2" / "cat.jpg")
    (folder / "notes.txt").write_text("not a photo")
    page.goto(base + "/")
    page.wait_for_selector("#model option", state="attached")
    page.set_input_files("#folder", str(folder))
    page.wait_for_function(
        "document.querySelectorAll('.caption:not(.pending)').length === 3", timeout=60_000
    )
    names = page.locator(".card .name").all_inner_texts()
    assert names == ["holiday/day2/cat.jpg", "holiday/photo2.jpg", "holiday/photo10.jpg"]
    assert "1 file skipped: not images" in page.locator("#status").inner_text()
    page.click("#clear")


def test_drop_photos_on_the_page(live, page, photo_dir):
    import base64

    base, _ = live
    page.goto(base + "/")
    page.wait_for_selector("#model option", state="attached")
    jpeg = base64.b64encode((photo_dir / "rocket.jpg").read_bytes()).decode()
    page.evaluate(
        """jpeg => {
          const bytes = Uint8Array.from(atob(jpeg), c => c.charCodeAt(0));
          const data = new DataTransfer();
          data.items.add(new File([bytes], "rocket.jpg", { type: "image/jpeg" }));
          data.items.add(new File(["not a photo"], "notes.txt", { type: "text/plain" }));
          document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        }""",
        jpeg,
    )
    page.wait_for_function(
        "document.querySelectorAll('.caption:not(.pending)').length === 1", timeout=60_000
    )
    assert page.locator(".card .name").all_inner_texts() == ["rocket.jpg"]
    assert "(1 file skipped: not images)" in page.locator("#status").inner_text()
    assert page.locator(".card .tag").count() >= 1
    page.click("#clear")


def test_keyboard_reaches_the_upload_zone(live, page):
    base, _ = live
    page.goto(base + "/")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "drop":
            break
    assert page.evaluate("document.activeElement.id") == "drop"


@needs_flickr
@pytest.mark.slow
def test_train_a_tiny_model_from_the_page(live, page):
    base, data = live
    subset = flickr_subset(data / "flickr")
    page.goto(base + "/train")
    page.fill("input[name=dataset_path]", str(subset))
    for name, value in {
        "epochs": "2",
        "embed_size": "16",
        "hidden_size": "32",
        "batch_size": "16",
        "vocab_threshold": "2",
    }.items():
        page.fill(f"input[name={name}]", value)
    page.click("button[type=submit]")
    page.wait_for_selector("#job:not([hidden])")
    page.wait_for_function(
        "document.getElementById('job-state').textContent === 'done'", timeout=240_000
    )
    assert page.locator("#epochs tr").count() == 2
    assert page.locator("#bar").evaluate("b => b.style.width") == "100%"
    job_id = page.url.split("job=")[1]
    page.reload()  # progress lives on the server, so a reload shows the same job
    page.wait_for_function("document.getElementById('job-state').textContent === 'done'")
    assert job_id in page.locator("#job-title").inner_text()
    page.goto(base + "/models")
    page.wait_for_selector(".card")
    assert job_id in page.locator("#models").inner_text()


def test_api_docs_render_without_internet(live, page):
    base, _ = live
    page.goto(base + "/docs")
    # Swagger UI drew the spec from local assets
    page.wait_for_selector('[data-path="/api/captions"]', timeout=30_000)
    assert page.locator(".opblock").count() >= 10
