"""The dataset picker's API (`GET /api/datasets`), datasets linked into a data root, named
models and renaming, through the real app (serving/dataset_index.py, data/detect.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PHOTOS
from fastapi.testclient import TestClient

from captioner.core.errors import DataPathError
from captioner.data.detect import detect, find_datasets
from captioner.serving.datapaths import confine
from captioner.serving.server import ServerSettings, create_app


def make_flickr8k(folder: Path, photo_dir: Path) -> Path:
    """A tiny Flickr8k folder: token file, split files, images/."""
    (folder / "images").mkdir(parents=True)
    names = [f"{n}.jpg" for n in PHOTOS]
    for n in names:
        shutil.copy(photo_dir / n, folder / "images" / n)
    lines = [f"{n}#{i}\t{PHOTOS[n[:-4]]} {i}" for n in names for i in range(2)]
    (folder / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (folder / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:3]) + "\n")
    (folder / "Flickr_8k.devImages.txt").write_text(names[3] + "\n")
    return folder


def make_coco(folder: Path, photo_dir: Path) -> Path:
    """A tiny COCO-2017 folder with train and val annotation files."""
    for split, names in (("train", list(PHOTOS)[:3]), ("val", list(PHOTOS)[3:])):
        (folder / f"{split}2017").mkdir(parents=True)
        images, anns = [], []
        for i, n in enumerate(names):
            image_id = 100 + i if split == "train" else 200 + i
            file_name = f"{image_id:012d}.jpg"
            shutil.copy(photo_dir / f"{n}.jpg", folder / f"{split}2017" / file_name)
            images.append({"id": image_id, "file_name": file_name})
            anns += [
                {"image_id": image_id, "id": image_id * 10 + k, "caption": PHOTOS[n]}
                for k in range(3)
            ]
        (folder / "annotations").mkdir(exist_ok=True)
        (folder / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns})
        )
    return folder


@pytest.fixture
def data_root(tmp_path, photo_dir, captions_csv) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    make_coco(root / "coco-tiny", photo_dir)
    (root / "mine").mkdir()
    shutil.copy(captions_csv, root / "mine" / "captions.csv")
    for n in PHOTOS:
        (root / "mine" / f"{n}.jpg").symlink_to(photo_dir / f"{n}.jpg")
    (root / "mine" / "notes.csv").write_text("a,b\n1,2\n")  # not a captions file
    # Kept elsewhere and linked in by the operator: ln -s ~/datasets/flickr8k data/
    elsewhere = make_flickr8k(tmp_path / "datasets" / "flickr8k", photo_dir)
    (root / "flickr8k").symlink_to(elsewhere)
    return root


@pytest.fixture
def client(tmp_path, data_root):
    settings = ServerSettings(state_dir=tmp_path / "state", data_roots=[data_root])
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        c.root = data_root
        yield c


def test_detect_formats_and_counts(data_root):
    found = {f.path.name: f for f in find_datasets(data_root)}
    assert set(found) == {"coco-tiny", "captions.csv", "flickr8k"}
    flickr = found["flickr8k"]
    assert (flickr.format, flickr.images, flickr.captions) == ("flickr8k", 4, 8)
    assert flickr.splits == ["train", "dev"]
    coco = found["coco-tiny"]
    assert (coco.format, coco.images, coco.captions) == ("coco", 4, 12)
    assert coco.splits == ["train", "val", "dev", "test"]
    mine = found["captions.csv"]
    assert (mine.format, mine.images, mine.captions, mine.splits) == (
        "captions",
        4,
        8,
        ["dev", "train"],
    )
    assert detect(data_root / "mine" / "notes.csv") == []


def test_api_lists_datasets_under_the_root(client):
    body = client.get("/api/datasets").json()
    assert body["roots"] == [str(client.root)]
    by_path = {d["path"]: d for d in body["datasets"]}
    assert set(by_path) == {"coco-tiny", "mine/captions.csv", "flickr8k"}
    flickr = by_path["flickr8k"]
    assert flickr["format"] == "flickr8k" and flickr["linked"] is True
    assert (flickr["images"], flickr["captions"], flickr["dataset_path"]) == (4, 8, "flickr8k")
    assert by_path["coco-tiny"]["linked"] is False
    # Cached: a dataset added now shows after a refresh.
    (client.root / "more.jsonl").write_text(
        json.dumps({"image": "x.jpg", "caption": "a cat"}) + "\n"
    )
    assert "more.jsonl" not in {d["path"] for d in client.get("/api/datasets").json()["datasets"]}
    fresh = client.get("/api/datasets?refresh=true").json()["datasets"]
    assert {"path": "more.jsonl", "format": "captions", "images": 1, "captions": 1}.items() <= next(
        d for d in fresh if d["path"] == "more.jsonl"
    ).items()


def test_a_linked_dataset_is_accepted_by_name_and_by_its_real_location(client, tmp_path):
    root, real = client.root, tmp_path / "datasets" / "flickr8k"
    assert confine("flickr8k", [root]) == root / "flickr8k"
    # The link's real location names the same files: read through the link.
    assert confine(str(real), [root]) == root / "flickr8k"
    assert confine(str(real / "images"), [root]) == root / "flickr8k" / "images"
    # ...but nothing beside it: the message no longer contradicts itself.
    with pytest.raises(DataPathError) as err:
        confine(str(tmp_path / "datasets"), [root])
    assert "not inside the data folders" in str(err.value) and str(root) in str(err.value)
    # A leading '/' typed by mistake gets a hint.
    with pytest.raises(DataPathError, match=r"did you mean 'flickr8k'"):
        confine("/flickr8k", [root])
    for typed in ("flickr8k", str(real)):
        res = client.post(
            "/api/jobs", json={"dataset_path": typed, "epochs": 1, "workers": 0, "device": "cpu"}
        )
        assert res.status_code == 201, res.text
        assert res.json()["config"]["dataset_path"] == str(root / "flickr8k")
        client.post(f"/api/jobs/{res.json()['id']}/stop")


def test_a_dangling_link_is_named(client, tmp_path):
    (client.root / "gone").symlink_to(tmp_path / "nowhere")
    res = client.post("/api/jobs", json={"dataset_path": "gone"})
    assert res.status_code == 422
    assert "link" in res.json()["detail"] and "nowhere" in res.json()["detail"]
