"""The web app's HTTP API with the real app, real models, real photos and real training jobs."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import zipfile
from pathlib import Path

import pytest
from conftest import FLICKR, needs_flickr
from fastapi.testclient import TestClient

from captioner.serving.server import ServerSettings, create_app

# A script, style or link that would load something from another host.
EXTERNAL = re.compile(
    r"""(from\s+["']https?:|import\(["']https?:|url\(\s*["']?https?:"""
    r"""|src=["']https?:|href=["']https?:|fetch\(["']https?:)"""
)


def flickr_subset(root: Path, n_train: int = 12, n_dev: int = 4) -> Path:
    """A tiny Flickr8k folder (real photos and captions, linked from ../shared)."""
    names = (FLICKR / "Flickr_8k.trainImages.txt").read_text().split()[:n_train]
    dev = (FLICKR / "Flickr_8k.devImages.txt").read_text().split()[:n_dev]
    (root / "images").mkdir(parents=True)
    for name in names + dev:
        (root / "images" / name).symlink_to(FLICKR / "images" / name)
    wanted = set(names + dev)
    lines = [
        ln
        for ln in (FLICKR / "Flickr8k.token.txt").read_text().splitlines()
        if ln.split("#")[0] in wanted
    ]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(dev) + "\n")
    return root


@pytest.fixture
def client(tmp_path):
    settings = ServerSettings(state_dir=tmp_path / "state", data_roots=[tmp_path / "data"])
    (tmp_path / "data").mkdir()
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        c.data_dir = tmp_path / "data"
        yield c


def upload(photo_dir: Path, *names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (n, (photo_dir / n).read_bytes(), "image/jpeg")) for n in names]


def test_health_docs_and_pages(client):
    assert client.get("/healthz").json()["status"] == "ok"
    docs = client.get("/docs")
    assert docs.status_code == 200 and not EXTERNAL.search(docs.text), "docs must not use a CDN"
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/api/captions" in spec["paths"] and "/api/jobs" in spec["paths"]
    for page in ("/", "/train", "/models"):
        html = client.get(page).text
        assert '<script type="module"' in html
        assert "http://" not in html and "https://" not in html
    # Every asset is served locally: no CDN anywhere in the pages.
    for asset in ("app.css", "app.js", "caption.js", "train.js", "models.js"):
        text = client.get(f"/static/{asset}").text
        assert not EXTERNAL.search(text), EXTERNAL.search(text)


def test_caption_uploads_json_and_csv(client, photo_dir):
    files = upload(photo_dir, "coffee.jpg", "chelsea.jpg") + [
        ("files", ("notes.txt", b"not a photo", "text/plain"))
    ]
    res = client.post("/api/captions", files=files, data={"beam_size": "3"})
    assert res.status_code == 200
    body = res.json()
    assert [r["image"] for r in body] == ["coffee.jpg", "chelsea.jpg", "notes.txt"]
    assert all(len(r["caption"].split()) >= 3 for r in body[:2])
    assert body[2]["caption"] is None and "not an image" in body[2]["error"]
    res = client.post(
        "/api/captions",
        files=upload(photo_dir, "rocket.jpg", "coffee.jpg"),
        data={"beam_size": "3"},
        headers={"Accept": "text/csv"},
    )
    assert res.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(res.text)))
    assert rows[0] == ["image", "caption", "confidence", "tags"]
    assert [r[0] for r in rows[1:]] == ["rocket.jpg", "coffee.jpg"]
    assert rows[2][1] == body[0]["caption"]  # same photo, same caption
    assert float(rows[2][2]) == pytest.approx(body[0]["confidence"], abs=1e-3)
    labels = [t.rsplit(":", 1)[0] for t in rows[2][3].split("; ")] if rows[2][3] else []
    assert labels == [t["label"] for t in body[0]["tags"]]


def test_captions_carry_confidence_tags_and_alternatives(client, photo_dir):
    res = client.post("/api/captions", files=upload(photo_dir, "chelsea.jpg", "coffee.jpg"))
    assert res.status_code == 200
    for r in res.json():
        assert 0 < r["confidence"] <= 1 and "alternatives" not in r
        probs = [t["probability"] for t in r["tags"]]
        assert probs == sorted(probs, reverse=True) and all(0.1 <= p <= 1 for p in probs)
        assert 1 <= len(r["tags"]) <= 5 and all(t["label"] for t in r["tags"])
    chelsea, coffee = res.json()
    assert "cat" in " ".join(t["label"] for t in chelsea["tags"])  # tabby, tiger cat...
    res = client.post(
        "/api/captions",
        files=upload(photo_dir, "chelsea.jpg", "coffee.jpg"),
        data={"alternatives": "3", "beam_size": "3"},
    )
    assert res.status_code == 200
    for r, plain in zip(res.json(), [chelsea, coffee], strict=True):
        alts = r["alternatives"]
        assert len(alts) == 3 and len({a["caption"] for a in alts}) == 3
        assert alts[0] == {"caption": r["caption"], "confidence": r["confidence"]}
        assert r["tags"] == plain["tags"]  # the same photo, the same classes
    for bad in ("0", "21", "many"):
        res = client.post(
            "/api/captions", files=upload(photo_dir, "coffee.jpg"), data={"alternatives": bad}
        )
        assert res.status_code == 422 and "alternatives" in json.dumps(res.json()["detail"])
    res = client.post(
        "/api/captions", files=upload(photo_dir, "coffee.jpg"), data={"alternatives": "21"}
    )
    assert "from 1 to 20" in res.json()["detail"]  # the same limit as Python and the CLI
    # Every decoding setting is a form field, checked by the same rule as everywhere.
    res = client.post(
        "/api/captions",
        files=upload(photo_dir, "coffee.jpg"),
        data={"repetition_penalty": "0", "max_len": "4"},
    )
    assert res.status_code == 200 and len(res.json()[0]["caption"].split()) <= 4
    res = client.post(
        "/api/captions", files=upload(photo_dir, "coffee.jpg"), data={"rerank_neighbours": "0"}
    )
    assert res.status_code == 422 and "set rerank_neighbours > 0" in res.json()["detail"]


def test_caption_errors_are_actionable(client, photo_dir):
    res = client.post(
        "/api/captions", files=upload(photo_dir, "coffee.jpg"), data={"beam_size": "0"}
    )
    assert res.status_code == 422 and "beam_size" in res.json()["detail"]
    res = client.post(
        "/api/captions", files=upload(photo_dir, "coffee.jpg"), data={"model": "nope"}
    )
    assert res.status_code == 404 and "GET /api/models" in res.json()["detail"]
    assert client.post("/api/captions").status_code == 422


def test_models_listing_default_download_and_protection(client):
    models = client.get("/api/models").json()
    assert [m["id"] for m in models] == ["bundled"]
    m = models[0]
    assert m["default"] and not m["deletable"] and m["dev_scores"]["CIDEr"] > 0.3
    assert m["encoder"] == "efficientnet_lite0" and m["size_bytes"] > 1_000_000
    res = client.get("/api/models/bundled/download")
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(res.content)).namelist()
    assert "bundled/model.safetensors" in names and "bundled/README.md" in names
    assert client.delete("/api/models/bundled").status_code == 403
    assert client.get("/api/models/../../etc").status_code == 404


def test_training_is_confined_to_data_roots(client, tmp_path):
    res = client.post("/api/jobs", json={"dataset_path": str(tmp_path / "elsewhere")})
    assert res.status_code == 403 and "data folder" in res.json()["detail"]
    res = client.post("/api/jobs", json={"dataset_path": str(client.data_dir), "learning_rate": -1})
    assert res.status_code == 422 and "learning_rate" in res.json()["detail"]


def test_caption_only_mode_has_no_training(tmp_path, photo_dir):
    app = create_app(ServerSettings(state_dir=tmp_path / "s", allow_training=False))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.post("/api/jobs", json={}).status_code in (404, 405)
        assert c.get("/api/jobs").status_code == 404
        assert c.get("/train").status_code == 404
        assert c.post("/api/captions", files=upload(photo_dir, "coffee.jpg")).status_code == 200


def wait_for(client, job_id: str, states: set[str], timeout: float = 300) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} stuck in {job['state']}: {job['log']}")


TINY_JOB = {
    "dataset_format": "flickr8k",
    "embed_size": 16,
    "hidden_size": 32,
    "batch_size": 16,
    "vocab_threshold": 2,
    "beam_size": 1,
}


@needs_flickr
@pytest.mark.slow
def test_training_job_runs_streams_and_publishes_a_model(client):
    data = flickr_subset(client.data_dir / "flickr")
    res = client.post("/api/jobs", json={**TINY_JOB, "dataset_path": str(data), "epochs": 2})
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["state"] not in ("queued", "running"):
                    break
    assert events[-1]["state"] == "done", events[-1]
    assert any(e["progress"].get("step") for e in events)  # live progress was pushed
    job = client.get(f"/api/jobs/{job_id}").json()
    assert [h["epoch"] for h in job["history"]] == [1, 2] and job["model_id"] == job_id
    ids = [m["id"] for m in client.get("/api/models").json()]
    assert job_id in ids
    assert client.post(f"/api/models/{job_id}/default").json()["default"]
    assert client.get("/healthz").json()["default_model"] == job_id
    assert client.delete(f"/api/models/{job_id}").status_code == 200
    assert client.get("/healthz").json()["default_model"] == "bundled"


@needs_flickr
@pytest.mark.slow
def test_stop_and_resume_a_job(client, tmp_path):
    data = flickr_subset(client.data_dir / "flickr")
    job_id = client.post(
        "/api/jobs", json={**TINY_JOB, "dataset_path": str(data), "epochs": 60}
    ).json()["id"]
    end = time.time() + 300
    while not client.get(f"/api/jobs/{job_id}").json()["history"]:
        assert time.time() < end
        time.sleep(0.3)
    stopped = client.post(f"/api/jobs/{job_id}/stop").json()
    assert stopped["state"] == "stopped"
    history = client.get(f"/api/jobs/{job_id}").json()["history"]
    assert 1 <= len(history) < 60
    # Wherever the stop landed, the job's history is its checkpoint's (the resume point).
    # tests/test_jobs.py stops at the two points around a checkpoint on purpose.
    ckpt = tmp_path / "state" / "runs" / job_id / "checkpoint"
    assert history == json.loads((ckpt / "state.json").read_text())["history"]
    assert client.post(f"/api/jobs/{job_id}/stop").status_code == 409
    assert client.post(f"/api/jobs/{job_id}/resume").json()["state"] == "running"
    job = wait_for(client, job_id, {"done", "failed"})
    assert job["state"] == "done", job["log"]
    assert [h["epoch"] for h in job["history"]] == list(range(1, 61))


def test_restart_marks_running_jobs_interrupted(tmp_path):
    from captioner.config import TrainConfig
    from captioner.serving.jobs import JobStore

    store = JobStore(tmp_path / "state" / "jobs.sqlite")  # no data needed: the job never runs
    job_id = store.create(TrainConfig(dataset_path=tmp_path / "flickr8k"))
    store.update(job_id, state="running", pid=999_999_999)
    with TestClient(
        create_app(ServerSettings(state_dir=tmp_path / "state")), base_url="http://127.0.0.1"
    ) as c:
        job = c.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "interrupted" and "resume" in job["error"]


def test_a_broken_model_is_listed_as_broken_and_the_list_still_works(client):
    broken = client.app.state.models.dir / "half-copied"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    res = client.get("/api/models")
    assert res.status_code == 200
    by_id = {m["id"]: m for m in res.json()}
    assert not by_id["bundled"]["broken"] and by_id["bundled"]["dev_scores"]["CIDEr"] > 0.3
    assert by_id["half-copied"]["broken"] and "not valid JSON" in by_id["half-copied"]["error"]
    one = client.get("/api/models/half-copied")
    assert one.status_code == 200 and one.json()["broken"]


def test_a_corrupt_default_falls_back_to_the_bundled_model(client, photo_dir):
    import shutil

    from captioner.api import default_model_path

    models = client.app.state.models
    shutil.copytree(default_model_path(), models.dir / "corrupt")
    (models.dir / "corrupt" / "model.safetensors").write_bytes(b"\0" * 1000)
    (models.prefs).write_text('{"default_model": "corrupt"}')
    res = client.post("/api/captions", files=upload(photo_dir, "coffee.jpg"))
    assert res.status_code == 200 and len(res.json()[0]["caption"].split()) >= 3
    assert res.headers["x-captioner-model"] == "bundled"
    health = client.get("/healthz").json()
    assert health["status"] == "degraded" and health["default_model"] == "corrupt"
    assert health["default_model_ok"] is False and "corrupt" in health["default_model_error"]
    assert health["serving_model"] == "bundled"
    listed = {m["id"]: m for m in client.get("/api/models").json()}
    assert listed["corrupt"]["broken"] and "unreadable weights" in listed["corrupt"]["error"]
    # Asking for the broken model by name is an error that says which model and why.
    res = client.post(
        "/api/captions", files=upload(photo_dir, "coffee.jpg"), data={"model": "corrupt"}
    )
    assert res.status_code == 500 and "corrupt cannot be loaded" in res.json()["detail"]


def test_server_csv_cells_cannot_run_as_formulas(client, photo_dir):
    data = (photo_dir / "coffee.jpg").read_bytes()
    names = ["=HYPERLINK(1).jpg", "+1.jpg", "-2.jpg", "@SUM.jpg", "plain.jpg"]
    files = [("files", (n, data, "image/jpeg")) for n in names]
    res = client.post("/api/captions", files=files, headers={"Accept": "text/csv"})
    rows = list(csv.reader(io.StringIO(res.text)))
    assert [r[0] for r in rows[1:]] == [
        "'=HYPERLINK(1).jpg",
        "'+1.jpg",
        "'-2.jpg",
        "'@SUM.jpg",
        "plain.jpg",
    ]


def test_batcher_merges_requests_only_when_their_options_match(photo_dir):
    import asyncio

    from captioner import Captioner
    from captioner.serving.batcher import Batcher

    cap = Captioner.load()
    calls: list[tuple[int, int]] = []
    describe = cap.describe

    def counting(images, **options):  # the real describe, counting each batch it is given
        calls.append((len(images), options["alternatives"]))
        return describe(images, **options)

    cap.describe = counting
    coffee, cat = (cap.open(photo_dir / n) for n in ("coffee.jpg", "chelsea.jpg"))

    async def clients():
        batcher = Batcher()
        return await asyncio.gather(
            batcher.describe(cap, [coffee] * 8, cap.decoding),  # keeps the worker busy
            batcher.describe(cap, [cat], cap.decoding),
            batcher.describe(cap, [coffee], cap.decoding),
            batcher.describe(cap, [cat], cap.decoding, alternatives=2),
        )

    busy, one, two, alts = asyncio.run(clients())
    assert sum(n for n, a in calls if a == 1) == 10 and len([a for _, a in calls if a == 1]) < 3
    assert (1, 2) in calls  # a different option never rides along with other requests
    assert two[0].caption == busy[0].caption and two[0].tags[0].label == busy[0].tags[0].label
    assert two[0].confidence == pytest.approx(busy[0].confidence, rel=1e-4)
    assert len(alts[0].alternatives) == 2 and not one[0].alternatives


# -- hardening: broken defaults, bad settings, the job queue, loaded models, model folders ------


@pytest.mark.parametrize("broken", ["decoding-fast", "hidden-60000", "weights-nan"])
def test_a_broken_default_is_found_once_listed_as_broken_and_replaced(
    tmp_path, photo_dir, caplog, broken
):
    """Made the default, then a restart: /healthz used to answer 500, every caption 500 (NaN
    weights: 'Out of range float values are not JSON compliant'), the list said healthy and
    each request loaded the model again."""
    from broken_models import make_broken

    state = tmp_path / "state"
    make_broken(state / "models" / "bad", broken)
    (state / "settings.json").write_text('{"default_model": "bad"}')
    caplog.set_level("WARNING", logger="captioner.serving.model_store")
    app = create_app(ServerSettings(state_dir=state, allow_training=False))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        health = c.get("/healthz")
        assert health.status_code == 200, health.text
        h = health.json()
        assert h["status"] == "degraded" and h["serving_model"] == "bundled"
        assert h["default_model_error"].startswith("model bad cannot be loaded: ")
        assert "models/bad" in h["default_model_error"]
        assert str(tmp_path) not in health.text  # the open /healthz names no server path
        for _ in range(3):
            res = c.post("/api/captions", files=upload(photo_dir, "coffee.jpg"))
            assert res.status_code == 200 and res.headers["x-captioner-model"] == "bundled"
            assert len(res.json()[0]["caption"].split()) >= 3
        listed = {m["id"]: m for m in c.get("/api/models").json()}
        assert listed["bad"]["broken"] and listed["bad"]["default"]
        assert not listed["bundled"]["broken"]
        # A server only this machine reaches and without a token shows its own paths.
        assert str(state / "models" / "bad") in listed["bad"]["error"]
    tries = [r for r in caplog.records if "model bad cannot be loaded" in r.getMessage()]
    assert len(tries) == 1, "a broken model must be loaded once, not once per request"
    assert "captioning with the bundled model instead" in tries[0].getMessage()


def test_loaded_models_are_kept_in_a_small_lru_that_always_keeps_the_default(tmp_path):
    from broken_models import copy_model

    from captioner.serving.model_store import ModelStore

    store = ModelStore(tmp_path / "models", tmp_path / "settings.json", max_loaded=2)
    for name in ("one", "two", "three"):
        copy_model(tmp_path / "models" / name)
    (tmp_path / "settings.json").write_text('{"default_model": "two"}')
    kept = []
    for model_id in (None, "one", "three", "bundled", "one"):
        store.get(model_id)
        kept.append(list(store.loaded))
    assert kept == [
        ["two"],
        ["two", "one"],
        ["two", "three"],  # "one" was the least recently used
        ["two", "bundled"],
        ["two", "one"],
    ]
    first = store.get("two")
    assert store.get() is first  # the default is never loaded twice


def test_model_downloads_and_lists_never_follow_links_or_odd_ids(client, tmp_path):
    from broken_models import copy_model

    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    models = client.app.state.models.dir
    copy_model(models / "planted", link_big=False)
    (models / "planted" / "shadow.txt").symlink_to(secret)
    copy_model(models / "evil\n")
    res = client.get("/api/models/planted/download")
    names = zipfile.ZipFile(io.BytesIO(res.content)).namelist()
    assert "planted/model.safetensors" in names and "planted/shadow.txt" not in names
    assert b"secret-hash" not in res.content
    listed = {m["id"]: m for m in client.get("/api/models").json()}
    assert "evil\n" not in listed and set(listed) == {"bundled", "planted"}
    assert listed["planted"]["size_bytes"] == listed["bundled"]["size_bytes"]  # no link counted
    assert client.get("/api/models/evil%0A/download").status_code == 404
    assert client.get("/api/models/evil%0A").status_code == 404


def test_unreasonable_settings_are_refused_in_plain_words(client):
    bodies = [
        ('{"dataset_path": "d", "grad_clip": Infinity}', "grad_clip: Input should be a finite"),
        ('{"dataset_path": "d", "weight_decay": Infinity}', "weight_decay: Input should be a"),
        ('{"dataset_path": "d", "weight_decay": 1e308, "epochs": 1}', "weight_decay: Input should"),
        ('{"dataset_path": "d", "learning_rate": NaN}', "learning_rate: Input should be a finite"),
        ('{"dataset_path": "d", "grad_clip": 1e300}', "grad_clip: Input should be less than or"),
        ('{"dataset_path": "d", "vocab_threshold": 1e308}', "vocab_threshold: Value error, 1e+308"),
        ('{"dataset_path": "d", "vocab_threshold": 1' + "0" * 40 + "}", "vocab_threshold: Inpu"),
        ('{"dataset_path": "d", "epochs": -Infinity}', "epochs: Value error, -inf is out of"),
    ]
    for body, words in bodies:
        res = client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
        assert res.status_code == 422, (body, res.text)
        detail = res.json()["detail"]
        assert words in detail and "pydantic" not in detail, (body, detail)
    assert client.get("/api/jobs").json() == []


@pytest.mark.parametrize(
    "path,words",
    [
        ("a" * 5000, "is 5000 bytes long; a file or folder name has at most 255"),
        ("data/" + "é" * 200 + "/x.csv", "is 400 bytes long; a file or folder name"),
        ("a/" * 2100 + "c.csv", "the path is 4205 bytes long; paths have at most 4096"),
    ],
)
def test_a_path_too_long_for_any_file_system_is_a_422(client, path, words):
    res = client.post("/api/jobs", json={"dataset_path": path, "dataset_format": "captions"})
    assert res.status_code == 422, res.text
    assert res.json()["detail"].startswith("dataset_path: ") and words in res.json()["detail"]


def test_a_saved_job_with_settings_json_cannot_hold_fails_in_plain_words(tmp_path, captions_csv):
    """An older server saved grad_clip = Infinity as null: the worker used to fail with
    pydantic's text and a link to its documentation."""
    import signal

    from captioner.config import TrainConfig
    from captioner.serving.jobs import JobStore, _run

    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.create(TrainConfig(dataset_path=captions_csv))
    config = store.get(job_id)["config"] | {"grad_clip": None}
    store.update(job_id, config=json.dumps(config))
    previous = signal.getsignal(signal.SIGTERM)  # the worker installs its stop handler
    try:
        assert _run(str(tmp_path / "jobs.sqlite"), job_id, str(tmp_path / "run"), "m") == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    job = store.get(job_id)
    assert job["state"] == "failed"
    assert job["error"] == "invalid training settings: grad_clip: Input should be a valid number"


@pytest.fixture
def queue_client(tmp_path, captions_csv):
    root = tmp_path / "data" / "photos"
    root.mkdir(parents=True)
    for f in captions_csv.parent.iterdir():
        (root / f.name).symlink_to(f)
    settings = ServerSettings(
        state_dir=tmp_path / "state", data_roots=[tmp_path / "data"], max_jobs=1, max_queued=2
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def test_the_job_queue_is_capped(queue_client):
    c = queue_client
    body = {"dataset_format": "captions", "dataset_path": "photos/captions.csv"}
    body |= {"epochs": 1000, "vocab_threshold": 1, "device": "cpu", "workers": 0}
    states = [c.post("/api/jobs", json=body).json()["state"] for _ in range(3)]
    assert states == ["running", "queued", "queued"]
    res = c.post("/api/jobs", json=body)
    assert res.status_code == 429 and res.headers["retry-after"]
    assert "2 training jobs are already waiting" in res.json()["detail"]
    assert "--max-queued is 2" in res.json()["detail"]
    jobs = c.get("/api/jobs").json()
    assert len(jobs) == 3
    queued = [j["id"] for j in jobs if j["state"] == "queued"]
    assert c.post(f"/api/jobs/{queued[0]}/stop").json()["state"] == "stopped"
    assert c.post("/api/jobs", json=body).status_code == 201  # room again
    # A resumed job waits in the same queue, under the same cap.
    assert c.post(f"/api/jobs/{queued[0]}/resume").status_code == 429
    for job in c.get("/api/jobs").json():
        if job["state"] in ("running", "queued"):
            c.post(f"/api/jobs/{job['id']}/stop")
