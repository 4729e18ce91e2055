"""A training job's phases reach the store from the first second, a job names its model, and a
model can be renamed (serving/jobs.py PhaseRecorder, serving/names.py, PATCH /api/models/ID).
One tiny job on four photos in a fresh folder, so its features are really extracted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_jobs import TINY, poll

from captioner.serving.names import check_name
from captioner.serving.server import ServerSettings, create_app


@pytest.fixture(scope="module")
def trained(tmp_path_factory, captions_csv):
    """A server whose one job ("Tiny photos (v1)") trained to the end; (client, job)."""
    tmp = tmp_path_factory.mktemp("named")
    root = tmp / "data"
    shutil.copytree(captions_csv.parent, root / "photos")  # new paths: features not cached yet
    settings = ServerSettings(state_dir=tmp / "state", data_roots=[root])
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        res = client.post("/api/jobs", json={**TINY, "epochs": 1, "name": "  Tiny photos (v1) "})
        assert res.status_code == 201, res.text
        assert res.json()["name"] == "Tiny photos (v1)"  # spaces around it dropped
        job_id = res.json()["id"]
        job = poll(
            lambda: client.get(f"/api/jobs/{job_id}").json(),
            lambda j: j["state"] not in ("queued", "running"),
            timeout=180,
        )
        assert job["state"] == "done", job["log"]
        client.state_dir = tmp / "state"
        yield client, job


@pytest.mark.parametrize(
    ("name", "problem"),
    [("a/b", "letters, digits"), ("x" * 65, "at most 64"), ("<b>", "letters"), (3, "as text")],
)
def test_bad_names_are_refused_with_the_rule(name, problem):
    from captioner.core.errors import ConfigError

    with pytest.raises(ConfigError, match=problem):
        check_name(name)


def test_every_phase_is_recorded(trained):
    client, job = trained
    progress = job["progress"]
    assert progress["phase"] == "done"
    phases = progress["phases"]
    order = [v["phase"] for v in phases.values()]
    for phase in ("starting", "data", "vocab", "features", "train", "dev", "epoch", "save"):
        assert phase in order, order
    assert order.index("starting") < order.index("data") < order.index("features")
    train_feats = next(v for k, v in phases.items() if "train images" in k)
    assert train_feats["done"] == train_feats["total"] == 4
    assert train_feats["images_per_s"] > 0  # really extracted: a speed was measured
    assert progress["data"] == {
        "train_images": 4,
        "dev_images": 4,
        "captions": 4,
        "words": progress["data"]["words"],
    }
    assert progress["epoch"] == 1 and progress["steps"] >= 1  # the last training step
    assert "features (efficientnet_lite0, train images)" in job["log"]
    assert "4 training images, 4 dev images" in job["log"]


def test_the_job_names_its_model_and_rename_persists(trained):
    client, job = trained
    model_id = job["model_id"]
    info = client.get(f"/api/models/{model_id}").json()
    assert info["name"] == "Tiny photos (v1)" and info["renamable"]
    res = client.patch(f"/api/models/{model_id}", json={"name": "Photos, better"})
    assert res.status_code == 200, res.text
    assert res.json()["name"] == "Photos, better"
    sidecar = client.state_dir / "models" / model_id / "name.json"
    assert json.loads(sidecar.read_text()) == {"name": "Photos, better"}
    listed = {m["id"]: m for m in client.get("/api/models").json()}
    assert listed[model_id]["name"] == "Photos, better"
    assert listed["bundled"]["name"] is None and not listed["bundled"]["renamable"]
    # Refused, with the reason; nothing changes.
    for body, status, words in [
        ({"name": "a/b"}, 422, "letters"),
        ({"name": "ok", "id": "x"}, 422, "all that can change"),
        ([1], 400, "name"),
    ]:
        res = client.patch(f"/api/models/{model_id}", json=body)
        assert res.status_code == status and words in res.json()["detail"], res.text
    assert client.patch("/api/models/bundled", json={"name": "x"}).status_code == 403
    assert client.patch("/api/models/nope", json={"name": "x"}).status_code == 404
    assert client.get(f"/api/models/{model_id}").json()["name"] == "Photos, better"
    # An empty name removes it: the id is shown again.
    assert client.patch(f"/api/models/{model_id}", json={"name": ""}).json()["name"] is None
    assert not sidecar.exists()


def test_a_bad_job_name_is_refused_before_anything_is_queued(trained):
    client, _ = trained
    before = len(client.get("/api/jobs").json())
    res = client.post("/api/jobs", json={**TINY, "name": "../../etc"})
    assert res.status_code == 422 and "name:" in res.json()["detail"]
    assert len(client.get("/api/jobs").json()) == before


def test_a_store_without_names_is_upgraded(tmp_path):
    import sqlite3

    from captioner.serving.jobs import JobStore

    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    db.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, created REAL NOT NULL, updated REAL NOT NULL, "
        "state TEXT NOT NULL, config TEXT NOT NULL, progress TEXT NOT NULL DEFAULT '{}', "
        "history TEXT NOT NULL DEFAULT '[]', log TEXT NOT NULL DEFAULT '', model_id TEXT, "
        "error TEXT, pid INTEGER, pid_start INTEGER)"
    )
    db.commit()
    db.close()
    store = JobStore(Path(tmp_path / "jobs.sqlite"))
    assert store.list() == []


def test_phase_changes_are_written_at_once_and_counts_throttled(tmp_path):
    from captioner.config import TrainConfig
    from captioner.core.progress import Event
    from captioner.serving.jobs import JobStore, PhaseRecorder

    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.create(TrainConfig(dataset_path=tmp_path), name="x")
    assert store.get(job_id)["progress"]["phase"] == "queued"  # from the first second
    record = PhaseRecorder(store, job_id, interval=3600)  # counts: only first, last, changes
    progress = lambda: store.get(job_id)["progress"]  # noqa: E731
    label = "features (efficientnet_lite0, train images)"
    record(Event("features", 0, 100, {"stage": "loading the encoder"}, label))
    assert progress()["features"]["stage"] == "loading the encoder"
    record(Event("features", 0, 100, {"stage": "encoding images"}, label))  # a new stage
    assert progress()["stage"] == "encoding images"
    speed = {"stage": "encoding images", "images_per_s": 20.0, "eta_s": 4}
    record(Event("features", 32, 100, speed, label))  # throttled
    assert progress()["features"]["done"] == 0
    record(Event("features", 100, 100, {**speed, "eta_s": 0}, label))  # the last: written
    p = progress()
    assert p["features"] == {"done": 100, "total": 100, **speed, "eta_s": 0}
    assert p["phases"][f"features: {label}"]["images_per_s"] == 20.0
    metrics = {"epoch": 1, "epochs": 2, "step": 1, "steps": 5, "loss": 3.2, "eta_s": 9}
    record(Event("train", 1, 10, {**metrics, "phase": "xe"}))  # a new phase: written
    p = progress()
    assert p["phase"] == "train" and p["train_phase"] == "xe" and p["loss"] == 3.2
    assert list(p["phases"]) == [f"features: {label}", "train"]
    assert (
        label in store.get(job_id)["log"]
        and "100 images, 20.0 images/s" in store.get(job_id)["log"]
    )
