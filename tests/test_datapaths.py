"""Paths a web user gives stay inside the server's data roots (serving/datapaths.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner.config import TrainConfig
from captioner.core.errors import DataPathError
from captioner.serving.datapaths import confine, path_fields
from captioner.serving.server import ServerSettings, create_app

# Roots that need not exist: confinement is lexical, so these properties need no files.
ROOTS = [Path("/nonexistent-captioner/data"), Path("/nonexistent-captioner/more/datasets")]

segment = st.one_of(
    st.sampled_from(["..", ".", "", "data", "more", "datasets", "flickr8k", "a b", "é"]),
    st.text(st.characters(blacklist_characters="/\0", codec="utf-8"), min_size=1, max_size=8),
)
relative = (
    st.lists(segment, min_size=1, max_size=8)
    .map("/".join)
    .filter(lambda p: p.strip() and not p.startswith("/"))
)
absolute = st.lists(segment, max_size=8).map(lambda parts: "/" + "/".join(parts))


def oracle(path: str) -> PurePosixPath:
    """Where an absolute path leads when '..' pops a folder: a reference written without
    os.path, to check the implementation against."""
    parts: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if parts:
                parts.pop()
        elif seg not in ("", "."):
            parts.append(seg)
    return PurePosixPath("/", *parts)


def blank_part(path: str) -> bool:
    """A folder or file name of spaces only: refused as a typing slip."""
    return any(seg and not seg.strip() for seg in path.split("/"))


def inside(path: PurePosixPath, root: Path) -> bool:
    return path.parts[: len(root.parts)] == root.parts


def test_path_fields_are_the_users_paths():
    # cache_dir is the server's; any Path field added later is confined without more code.
    assert path_fields(TrainConfig) == ["dataset_path", "images"]


@settings(max_examples=400, deadline=None)
@given(relative)
def test_relative_paths_are_read_inside_a_root_or_refused(path):
    if blank_part(path):
        with pytest.raises(DataPathError, match="only spaces"):
            confine(path, ROOTS)
        return
    expected = [oracle(f"{r}/{path}") for r in ROOTS]
    allowed = [e for e in expected if any(inside(e, r) for r in ROOTS)]
    if not allowed:
        with pytest.raises(DataPathError, match="relative to a data folder"):
            confine(path, ROOTS)
        return
    got = confine(path, ROOTS)
    assert PurePosixPath(got) == allowed[0]  # nothing exists: the first root that fits
    assert ".." not in got.parts and got.is_absolute()


@settings(max_examples=400, deadline=None)
@given(absolute)
def test_absolute_paths_must_lie_inside_a_root(path):
    if blank_part(path):
        with pytest.raises(DataPathError, match="only spaces"):
            confine(path, ROOTS)
        return
    where = oracle(path)
    if any(inside(where, r) for r in ROOTS):
        assert PurePosixPath(confine(path, ROOTS)) == where
    else:
        with pytest.raises(DataPathError) as err:
            confine(path, ROOTS)
        message = str(err.value)
        assert all(str(r) in message for r in ROOTS) and "relative to a data folder" in message


@settings(max_examples=200, deadline=None)
@given(st.one_of(relative, absolute))
def test_confinement_is_idempotent(path):
    try:
        once = confine(path, ROOTS)
    except DataPathError:
        return
    assert confine(once, ROOTS) == once
    for root in ROOTS:  # and the same place when given relative to its root
        if inside(PurePosixPath(once), root):
            assert confine(os.path.relpath(once, root), [root]) == once


def test_concrete_cases(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "elsewhere" / "flickr8k"
    root.mkdir()
    outside.mkdir(parents=True)
    (root / "flickr8k").symlink_to(outside)  # how people link a dataset in
    assert confine("flickr8k", [root]) == root / "flickr8k"
    with pytest.raises(DataPathError, match="only spaces"):
        confine("../data/flickr8k/ ", [root])  # found by the idempotence property
    assert confine(root / "flickr8k" / "images", [root]) == root / "flickr8k" / "images"
    # The link's real location names the same files: it is read through the link.
    assert confine(str(outside / "images"), [root]) == root / "flickr8k" / "images"
    for escape in (
        "../elsewhere/flickr8k",
        "flickr8k/../../elsewhere",
        str(outside.parent),
        "/etc",
    ):
        with pytest.raises(DataPathError, match=f"not inside the data folders .*{root}"):
            confine(escape, [root])
    # '..' is applied to the typed path, never after the link: flickr8k/.. is the root itself.
    assert confine("flickr8k/..", [root]) == root
    # A root that is itself a link accepts paths through its real location too.
    (tmp_path / "link").symlink_to(root)
    assert confine(root / "flickr8k", [tmp_path / "link"]) == root / "flickr8k"
    with pytest.raises(DataPathError, match="--data-root"):
        confine("flickr8k", [])
    with pytest.raises(DataPathError, match="not a path"):
        confine("", [root])


@pytest.fixture
def server(tmp_path, captions_csv):
    root = tmp_path / "data"
    (root / "photos").mkdir(parents=True)
    for f in captions_csv.parent.iterdir():
        (root / "photos" / f.name).symlink_to(f)
    settings_ = ServerSettings(state_dir=tmp_path / "state", data_roots=[root])
    with TestClient(create_app(settings_), base_url="http://127.0.0.1") as client:
        client.root = root
        yield client


def test_every_path_field_is_confined_over_http(server, tmp_path):
    root = server.root
    caps = {"dataset_format": "captions", "dataset_path": str(root / "photos" / "captions.csv")}
    # The reported bypass: a dataset inside the root, its images anywhere.
    res = server.post("/api/jobs", json={**caps, "images": "/etc"})
    assert res.status_code == 403, res.text
    detail = res.json()["detail"]
    assert "/etc is not inside" in detail and str(root) in detail and "relative" in detail
    res = server.post("/api/jobs", json={**caps, "dataset_path": "photos/../../state"})
    assert res.status_code == 403 and "'..' may not leave it" in res.json()["detail"]
    res = server.post("/api/jobs", json={**caps, "dataset_path": "photos/nope.csv"})
    assert res.status_code == 422 and "photos/nope.csv does not exist" in res.json()["detail"]
    assert server.get("/api/jobs").json() == []  # nothing refused was queued
    assert server.get("/api/datasets").json()["roots"] == [str(root)]


def test_image_paths_inside_a_dataset_file_are_confined_too(server, tmp_path):
    root = server.root
    (tmp_path / "outside.jpg").write_bytes(b"x")  # exists: must not be told apart from missing
    body = {"dataset_format": "captions", "dataset_path": "photos/bad.csv", "epochs": 1}
    rows = ["/etc/shadow", "../../../../../../../../etc/passwd", "../../outside.jpg"]
    for row in [*rows, "../../missing.jpg", str(tmp_path / "outside.jpg"), "y" * 300 + ".jpg"]:
        (root / "photos" / "bad.csv").write_text(
            "image,caption,split\nastronaut.jpg,a woman,train\nastronaut.jpg,a woman,dev\n"
            f"{row},a secret,train\n"
        )
        res = server.post("/api/jobs", json=body)
        assert res.status_code == 403, res.text
        detail = res.json()["detail"]
        assert "1 of 2 image paths in it are not paths inside the data folders" in detail
        quoted = {"etc", "shadow", "passwd", "jpg", "missing", "exist", "secret"}
        assert not quoted & set(re.split(r"\W", detail.replace(str(root), "ROOT")))
    # A .csv (or .jsonl) that is a link to a system file: refused, quoting none of it.
    for name in ("passwd.csv", "passwd.jsonl"):
        (root / "photos" / name).symlink_to("/etc/passwd")
        res = server.post("/api/jobs", json={**body, "dataset_path": f"photos/{name}"})
        assert res.status_code == 400, res.text
        detail = res.json()["detail"].replace(str(root), "ROOT")
        assert f"ROOT/photos/{name}:1: " in detail and "root" not in detail
    assert server.get("/api/jobs").json() == []  # nothing refused was queued


def test_linked_dataset_is_accepted_relative_to_the_root(server, tmp_path, captions_csv):
    # The operator links data kept elsewhere into the root; the user types it relatively.
    (server.root / "linked").symlink_to(captions_csv.parent)
    body = {"dataset_format": "captions", "dataset_path": "linked/captions.csv", "epochs": 1}
    res = server.post("/api/jobs", json={**body, "images": "linked", "workers": 64})
    assert res.status_code == 201, res.text
    job = res.json()
    assert job["config"]["dataset_path"] == str(server.root / "linked" / "captions.csv")
    assert job["config"]["images"] == str(server.root / "linked")
    assert job["config"]["workers"] == (os.cpu_count() or 1)  # capped by the cores
    assert server.post(f"/api/jobs/{job['id']}/stop").json()["state"] == "stopped"
