from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from conftest import COCO, FLICKR, needs_coco, needs_flickr

from captioner.core.errors import DataPathError
from captioner.data.datasets import DatasetError, load_dataset, read_captions_file, read_flickr8k


@needs_flickr
def test_flickr8k_splits_on_real_data():
    train = load_dataset("flickr8k", FLICKR, "train")
    dev = load_dataset("flickr8k", FLICKR, "dev")
    assert (len(train), len(dev)) == (6000, 1000)
    assert all(len(r.captions) == 5 and r.image.is_file() for r in train[:50])
    assert not {r.image for r in train} & {r.image for r in dev}


@needs_coco
@pytest.mark.parametrize("split,images,captions", [("train", 80, 400), ("val", 79, 395)])
def test_coco_official_layout(split, images, captions):
    recs = load_dataset("coco", COCO, split)
    assert len(recs) == images and sum(len(r.captions) for r in recs) == captions
    assert all(r.image.parent == COCO / f"{split}2017" for r in recs)


@needs_coco
def test_coco_cocoapi_layout(tmp_path):
    # cocoapi users keep images under images/{split}2017 beside annotations/.
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "val2017").symlink_to(COCO / "val2017")
    (tmp_path / "annotations").symlink_to(COCO / "annotations")
    recs = load_dataset("coco", tmp_path, "val")
    assert len(recs) == 79 and recs[0].image.parent == tmp_path / "images" / "val2017"


def _flickr(tmp_path: Path, tokens: str, images=("a.jpg", "b.jpg")) -> Path:
    (tmp_path / "images").mkdir()
    for name in images:
        (tmp_path / "images" / name).write_bytes(b"x")
    (tmp_path / "Flickr8k.token.txt").write_text(tokens)
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\n")
    return tmp_path


def test_flickr8k_skips_malformed_keys(tmp_path, caplog):
    root = _flickr(
        tmp_path,
        "a.jpg#0\tA dog.\na.jpg.1#0\tghost image\nbad line\n"
        "b.jpg#0\tA cat.\nb.jpg#1\tA small cat.\n",
    )
    with caplog.at_level(logging.INFO):
        recs = read_flickr8k(root, "train")
    assert [(r.image.name, r.captions) for r in recs] == [
        ("a.jpg", ("A dog.",)),
        ("b.jpg", ("A cat.", "A small cat.")),
    ]
    assert "skipped 2 lines" in caplog.text


def test_missing_images_reported_or_skipped(tmp_path, caplog):
    root = _flickr(tmp_path, "a.jpg#0\tA dog.\nb.jpg#0\tA cat.\n", images=("a.jpg",))
    with pytest.raises(DatasetError, match=r"1 of 2 images do not exist.*b\.jpg.*--skip-missing"):
        read_flickr8k(root, "train")
    with caplog.at_level(logging.WARNING):
        recs = read_flickr8k(root, "train", skip_missing=True)
    assert [r.image.name for r in recs] == ["a.jpg"] and "skipped 1 of 2" in caplog.text


def test_captions_csv_and_jsonl(tmp_path):
    for name in ("x.jpg", "y.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "c.csv").write_text("image,caption\nx.jpg,one\nx.jpg,two\ny.jpg,three\n")
    recs = read_captions_file(tmp_path / "c.csv")
    assert [(r.image.name, r.captions) for r in recs] == [
        ("x.jpg", ("one", "two")),
        ("y.jpg", ("three",)),
    ]
    (tmp_path / "c.jsonl").write_text(
        '{"image": "x.jpg", "caption": "one", "split": "dev"}\n'
        '{"image": "y.jpg", "caption": "two", "split": "train"}\n'
    )
    assert [r.image.name for r in read_captions_file(tmp_path / "c.jsonl", "dev")] == ["x.jpg"]


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("c.csv", "img,text\nx.jpg,a\n", r"c\.csv:1: expected a header row with columns image,"),
        ("c.csv", "image,caption\nx.jpg,\n", r"c\.csv:2: missing or empty 'caption'"),
        ("c.jsonl", '{"image": "x.jpg", "caption": "a"}\n{oops\n', r"c\.jsonl:2: not valid JSON"),
        ("c.jsonl", '["x.jpg", "a"]\n', r"c\.jsonl:1: expected an object"),
        ("c.txt", "x.jpg a\n", r"unsupported captions file type '\.txt'"),
    ],
)
def test_bad_captions_files_name_file_and_line(tmp_path, name, text, message):
    (tmp_path / "x.jpg").write_bytes(b"x")
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_captions_file(tmp_path / name)


def test_errors_never_quote_the_file(tmp_path):
    # A "dataset" that is a link to a system file: its first line is no header, and the error
    # (shown to a web user as the job's error) must not show any of it.
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/false\n")
    (tmp_path / "c.csv").symlink_to(secret)
    (tmp_path / "c.jsonl").symlink_to(secret)
    for name in ("c.csv", "c.jsonl"):
        with pytest.raises(DatasetError) as err:
            read_captions_file(tmp_path / name)
        assert "root" not in str(err.value).replace(str(tmp_path), "") and ":1:" in str(err.value)
    (tmp_path / "bad.csv").write_bytes(b"image,caption\nx\xff.jpg,a cat\n")
    with pytest.raises(DatasetError, match=r"bad\.csv: not UTF-8 text; save it as UTF-8"):
        read_captions_file(tmp_path / "bad.csv")
    (tmp_path / "big.csv").write_text('image,caption\nx.jpg,"' + "a" * 200_000 + '"\n')
    with pytest.raises(DatasetError, match=r"big\.csv:2: not a CSV row"):
        read_captions_file(tmp_path / "big.csv")


def test_confined_image_paths_are_refused_before_any_is_looked_up(tmp_path):
    """`confine_image` (the server passes datapaths.confine with its data roots) refuses paths
    that leave the folders, counting them without naming them or saying which exist."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "x.jpg").write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"x")  # exists: must not be told apart from missing

    def inside_root(image: Path) -> Path:
        normal = Path(os.path.normpath(image))
        if not normal.is_relative_to(root):
            raise DataPathError(f"{image} is outside")  # never shown: the reader counts it
        return normal

    csv_path = root / "c.csv"
    for rows in (["/etc/shadow"], ["../../outside.jpg"], ["../../missing.jpg"]):
        csv_path.write_text("image,caption\nx.jpg,a cat\n" + "".join(f"{r},a\n" for r in rows))
        with pytest.raises(DataPathError) as err:
            read_captions_file(csv_path, images=root / "images", confine_image=inside_root)
        message = str(err.value)
        assert "1 of 2 image paths in it are not paths inside the data folders" in message
        assert rows[0].lstrip("./") not in message and "exist" not in message
    # The command line (no confine_image) still reads any path it is given.
    csv_path.write_text("image,caption\nx.jpg,a cat\n../../outside.jpg,a\n")
    recs = read_captions_file(csv_path, images=root / "images")
    assert recs[1].image.resolve() == tmp_path / "outside.jpg"
    csv_path.write_text(f"image,caption\nx.jpg,a cat\n{'y' * 300}.jpg,a\n")  # ENAMETOOLONG
    with pytest.raises(DatasetError, match=r"1 of 2 images do not exist"):
        read_captions_file(csv_path, images=root / "images")
    csv_path.write_text("image,caption\nx.jpg,a cat\nsub/../x.jpg,a dog\n")
    recs = read_captions_file(csv_path, images=root / "images", confine_image=inside_root)
    assert [r.image for r in recs] == [root / "images" / "x.jpg"] * 2  # the normalised path
    # Karpathy's 2014 path is tried first: outside the folders it is never even looked at.
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "a.jpg").write_bytes(b"x")
    image = {"filepath": "../val2014", "filename": "a.jpg", "cocoid": 1, "split": "val"}
    (root / "dataset_coco.json").write_text(
        json.dumps({"images": [{**image, "sentences": [{"raw": "a cat"}]}]})
    )
    with pytest.raises(DataPathError, match="1 of 1 image paths"):
        load_dataset("karpathy", root, "val", confine_image=inside_root)
    assert load_dataset("karpathy", root, "val")[0].image.is_file()  # the CLI finds it


def test_bad_coco_files(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    ann = tmp_path / "annotations" / "captions_val2017.json"
    ann.write_text("{\n  not json")
    with pytest.raises(DatasetError, match=r"captions_val2017\.json:2: not valid JSON"):
        load_dataset("coco", tmp_path, "val")
    ann.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(DatasetError, match="not a COCO captions file"):
        load_dataset("coco", tmp_path, "val")
    with pytest.raises(DatasetError, match="captions_train2017.json not found"):
        load_dataset("coco", tmp_path, "train")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_dataset("voc", tmp_path)


@needs_coco
def test_coco_val_halves_are_fixed_and_disjoint():
    dev, test = load_dataset("coco", COCO, "dev"), load_dataset("coco", COCO, "test")
    val = load_dataset("coco", COCO, "val")
    assert len(dev) + len(test) == len(val) and dev and test
    assert not {r.image for r in dev} & {r.image for r in test}
    assert [r.image for r in load_dataset("coco", COCO, "dev")] == [r.image for r in dev]


@needs_coco
def test_karpathy_split_file_with_coco2017_images(tmp_path):
    """A small dataset_coco.json in Karpathy's format: 2014 file names, found by COCO id."""
    (tmp_path / "images").mkdir()
    for split in ("train", "val"):
        (tmp_path / "images" / f"{split}2017").symlink_to(COCO / f"{split}2017")
    ids = [int(p.stem) for p in sorted((COCO / "val2017").glob("*.jpg"))[:6]]
    images = [
        {
            "filepath": "val2014",
            "filename": f"COCO_val2014_{i:012d}.jpg",
            "cocoid": i,
            "split": split,
            "sentences": [{"raw": f"caption {i} {k}"} for k in range(5)],
        }
        for i, split in zip(ids, ["train", "restval", "val", "val", "test", "train"], strict=True)
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}))
    train = load_dataset("karpathy", tmp_path, "train")
    assert len(train) == 3 and all(r.image.is_file() and len(r.captions) == 5 for r in train)
    assert len(load_dataset("karpathy", tmp_path, "val")) == 2
    assert len(load_dataset("karpathy", tmp_path, "test")) == 1
    with pytest.raises(DatasetError, match="train, val and test"):
        load_dataset("karpathy", tmp_path, "dev")
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": [{"split": "val"}]}))
    with pytest.raises(DatasetError, match="not a Karpathy split file"):
        load_dataset("karpathy", tmp_path, "val")
