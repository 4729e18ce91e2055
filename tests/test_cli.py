"""The `captioner` command end to end, as a user runs it, on real photos."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PHOTOS

from captioner import default_model_path

CLEAN = re.compile(r"^[a-z0-9']+( [a-z0-9']+){2,19}$")  # 3-20 plain words, nothing else


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "captioner", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ},
        timeout=600,
    )


def test_help_explains_every_command():
    out = run("--help").stdout
    for command in ("caption", "train", "evaluate", "features"):
        assert command in out
        sub = run(command, "--help")
        assert sub.returncode == 0 and "usage: captioner " + command in sub.stdout
    assert "--vocab-threshold" in run("train", "--help").stdout


def test_caption_folder_with_bundled_model(photo_dir):
    assert (default_model_path() / "model.safetensors").is_file(), "bundled model is missing"
    res = run("caption", str(photo_dir))
    assert res.returncode == 0, res.stderr
    lines = [ln.split("\t") for ln in res.stdout.splitlines()]
    assert [Path(p).stem for p, *_ in lines] == sorted(PHOTOS)
    assert all(CLEAN.match(c) for _, c, *_ in lines), lines
    # Deterministic: the same photos give the same captions, in any batch.
    again = run("caption", "--batch-size", "1", *[p for p, *_ in reversed(lines)])
    again_lines = sorted(ln.split("\t") for ln in again.stdout.splitlines())
    assert [r[:2] for r in again_lines] == sorted(r[:2] for r in lines)
    for r, first in zip(again_lines, sorted(lines), strict=True):  # batches differ in float noise
        assert float(r[2]) == pytest.approx(float(first[2]), abs=2e-3)


def test_caption_reports_bad_files_and_keeps_the_rest(photo_dir, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    out_csv = tmp_path / "out.csv"
    res = run(
        "caption",
        str(photo_dir / "coffee.jpg"),
        str(bad),
        str(tmp_path / "missing.png"),
        str(photo_dir / "chelsea.jpg"),
        "--csv",
        str(out_csv),
    )
    assert res.returncode == 1
    assert "notes.jpg: cannot read image" in res.stderr
    assert "missing.png: no such file" in res.stderr
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["image", "caption", "confidence", "tags"]
    assert [Path(r[0]).name for r in rows[1:]] == ["coffee.jpg", "chelsea.jpg"]
    assert all(CLEAN.match(r[1]) for r in rows[1:])


def test_train_then_evaluate_from_the_command_line(captions_csv, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        f'dataset_format = "captions"\ndataset_path = "{captions_csv}"\n'
        "vocab_threshold = 1\nembed_size = 32\nhidden_size = 32\nbatch_size = 4\n"
    )
    res = run(
        "train", "--config", str(cfg), "--epochs", "2", "--out", str(tmp_path / "run"), "--quiet"
    )
    assert res.returncode == 0, res.stderr
    assert "model saved to" in res.stdout
    model = tmp_path / "run" / "model"
    report = tmp_path / "report.json"
    res = run(
        "evaluate",
        "--model",
        str(model),
        "--format",
        "captions",
        "--data",
        str(captions_csv),
        "--split",
        "dev",
        "--report",
        str(report),
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(report.read_text())
    assert set(data["metrics"]) == {
        "BLEU-1",
        "BLEU-2",
        "BLEU-3",
        "BLEU-4",
        "METEOR",
        "ROUGE-L",
        "CIDEr",
    }
    assert len(data["captions"]) == len(PHOTOS) and "CIDEr" in res.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["train", "--out", "x", "--dataset-path", "nowhere", "--dataset-format", "flickr8k"],
            "nowhere/Flickr8k.token.txt not found",
        ),
        (
            ["train", "--out", "x", "--dataset-path", "d", "--learning-rate", "-1"],
            "learning_rate: Input should be greater than 0",
        ),
        (["caption", "--model", "no-such-model", "x.jpg"], "model folder no-such-model not found"),
    ],
)
def test_bad_input_gives_a_clear_error(args, message, tmp_path):
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_caption_csv_is_formula_safe_and_ctrl_c_keeps_the_rows_done(photo_dir, tmp_path):
    import shutil
    import signal
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):  # enough that Ctrl-C lands mid-run
        shutil.copy(photo_dir / "coffee.jpg", folder / f"{i:02d}.jpg")
    formula = folder / "=HYPERLINK(1).jpg"
    shutil.copy(photo_dir / "chelsea.jpg", formula)
    out = tmp_path / "out.csv"
    args = ["caption", formula.name, str(folder), "--batch-size", "1", "--csv", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=folder,
    )
    deadline = time.monotonic() + 120
    while not any(len(f.read_text().splitlines()) > 3 for f in tmp_path.glob(".out.csv.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    assert not out.exists()  # rows go to the temp file until the end
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = list(csv.reader(out.open()))
    assert f"interrupted: kept the {len(rows) - 1} captions done so far in {out}" in err
    assert "Traceback" not in err and 3 <= len(rows) - 1 < 61
    assert rows[0][:2] == ["image", "caption"] and not list(tmp_path.glob(".out.csv.*"))
    # The formula-looking name was given relative, so its cell starts with "=": neutralised.
    assert rows[1][0] == "'=HYPERLINK(1).jpg" and all(CLEAN.match(r[1]) for r in rows[1:])


def numbered_folder(photo_dir: Path, root: Path) -> Path:
    """image1, image2, image10 (and sub/image3): file-name order is not natural order."""
    import shutil

    (root / "sub").mkdir(parents=True)
    for name, photo in [("image10", "coffee"), ("image2", "chelsea"), ("image1", "rocket")]:
        shutil.copy(photo_dir / f"{photo}.jpg", root / f"{name}.jpg")
    shutil.copy(photo_dir / "astronaut.jpg", root / "sub" / "image3.jpg")
    return root


def test_caption_formats_agree_and_follow_natural_order(photo_dir, tmp_path):
    folder = numbered_folder(photo_dir, tmp_path / "photos")
    order = ["image1", "image2", "image10", "image3"]  # sub/ after the folder's own files
    res = run("caption", str(folder))  # stdout: TSV
    assert res.returncode == 0, res.stderr
    tsv = [ln.split("\t") for ln in res.stdout.splitlines()]
    assert [Path(r[0]).stem for r in tsv] == order and all(len(r) == 4 for r in tsv)
    for name in ("out.csv", "out.jsonl"):
        res = run("caption", str(folder), "--out", str(tmp_path / name))
        assert res.returncode == 0 and f"wrote 4 captions to {tmp_path / name}" in res.stderr
    rows = list(csv.DictReader((tmp_path / "out.csv").open(newline="")))
    assert list(rows[0]) == ["image", "caption", "confidence", "tags"]
    lines = [json.loads(ln) for ln in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [Path(j["image"]).stem for j in lines] == order
    for (image, caption, confidence, tags), row, j in zip(tsv, rows, lines, strict=True):
        assert image == row["image"] == j["image"] and caption == row["caption"] == j["caption"]
        assert CLEAN.match(caption) and 0 < j["confidence"] <= 1
        assert (
            float(confidence)
            == float(row["confidence"])
            == pytest.approx(j["confidence"], abs=1e-3)
        )
        assert (
            tags
            == row["tags"]
            == "; ".join(f"{t['label']}:{t['probability']:.2f}" for t in j["tags"])
        )
    assert any("cat" in t["label"] for t in lines[1]["tags"])  # image2 is Chelsea the cat
    # --format wins over the extension; --csv still writes the same CSV as --out x.csv.
    res = run(
        "caption", str(folder / "image2.jpg"), "--format", "jsonl", "--out", str(tmp_path / "x.txt")
    )
    assert json.loads((tmp_path / "x.txt").read_text())["caption"] == lines[1]["caption"]
    res = run("caption", str(folder), "--csv", str(tmp_path / "old.csv"))
    assert (tmp_path / "old.csv").read_text() == (tmp_path / "out.csv").read_text()
    res = run("caption", str(folder), "--out", str(tmp_path / "out.xlsx"))
    assert res.returncode == 2 and "add --format tsv|csv|jsonl" in res.stderr


def test_sidecars_metadata_jsonl_and_resume_with_skip_existing(photo_dir, tmp_path):
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo_dir / "coffee.jpg", folder / "image10.jpg")
    shutil.copy(photo_dir / "chelsea.jpg", folder / "image2.jpg")
    out = tmp_path / "captions.jsonl"
    flags = ["--sidecar", "--metadata", "--skip-existing", "--out", str(out)]
    first = run("caption", str(folder), *flags)
    assert first.returncode == 0, first.stderr
    # A bigger folder now, and one image's sidecar deleted: only those are captioned again.
    numbered_folder(photo_dir, tmp_path / "more")
    shutil.copytree(tmp_path / "more" / "sub", folder / "sub")
    shutil.copy(tmp_path / "more" / "image1.jpg", folder / "image1.jpg")
    (folder / "image2.txt").unlink()
    bad = folder / "broken.png"
    bad.write_bytes(b"not a png")
    again = run("caption", str(folder), *flags)
    assert again.returncode == 1 and "broken.png: cannot read image" in again.stderr
    assert "skipping 1 images already captioned" in again.stderr  # image10: in every output
    assert "wrote 2 captions" in again.stderr  # image2 was in the --out file already
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    names = [Path(r["image"]).name for r in rows]
    assert names == ["image2.jpg", "image10.jpg", "image1.jpg", "image3.jpg"]  # appended
    by_name = {Path(r["image"]).relative_to(folder).as_posix(): r["caption"] for r in rows}
    for rel, caption in by_name.items():
        assert (folder / rel).with_suffix(".txt").read_text() == caption + "\n"
    meta = [json.loads(ln) for ln in (folder / "metadata.jsonl").read_text().splitlines()]
    assert all(set(m) == {"file_name", "text"} for m in meta)
    assert {m["file_name"]: m["text"] for m in meta} == by_name and len(meta) == 4
    assert "sub/image3.jpg" in by_name  # file_name is relative to the folder, with /
    # Nothing left to do: nothing is loaded or rewritten.
    before = out.read_text()
    third = run("caption", str(folder / "image1.jpg"), str(folder / "image10.jpg"), *flags)
    assert third.returncode == 0 and "skipping 2 images" in third.stderr
    assert out.read_text() == before


def test_metadata_jsonl_loads_as_a_hugging_face_imagefolder(photo_dir, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="`pip install datasets` to check this")
    folder = numbered_folder(photo_dir, tmp_path / "photos")
    res = run("caption", str(folder), "--metadata", "--sidecar")
    assert res.returncode == 0, res.stderr
    captions = {Path(ln.split("\t")[0]).name: ln.split("\t")[1] for ln in res.stdout.splitlines()}
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    assert set(ds.column_names) == {"image", "text"} and ds.num_rows == 4
    assert sorted(ds["text"]) == sorted(captions.values())
    assert all(row["image"].size[0] > 100 for row in ds)  # the photos themselves, not the .txt


def test_ctrl_c_then_skip_existing_finishes_a_folder_once(photo_dir, tmp_path):
    import shutil
    import signal
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        shutil.copy(photo_dir / "coffee.jpg", folder / f"{i}.jpg")
    (folder / "metadata.jsonl").write_text('{"file_name": "old.jpg", "text": "kept"}\n')
    out = tmp_path / "out.jsonl"
    args = ["caption", str(folder), "--batch-size", "1", "--metadata", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", *args], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not any(len(f.read_text().splitlines()) >= 3 for f in tmp_path.glob(".out.jsonl.*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: kept the" in err, err
    done = [json.loads(ln)["image"] for ln in out.read_text().splitlines()]
    meta = [
        json.loads(ln)["file_name"]
        for ln in (folder / "metadata.jsonl").read_text().split("\n")
        if ln
    ]
    assert meta == ["old.jpg"] + [Path(p).name for p in done]  # both kept the same rows
    assert not list(tmp_path.rglob(".*.tmp"))
    res = run(*args, "--skip-existing")
    assert res.returncode == 0 and f"skipping {len(done)} images" in res.stderr
    images = [json.loads(ln)["image"] for ln in out.read_text().splitlines()]
    assert images == [str(folder / f"{i}.jpg") for i in range(30)]  # natural order, each once
    meta = [
        json.loads(ln)["file_name"]
        for ln in (folder / "metadata.jsonl").read_text().split("\n")
        if ln
    ]
    assert sorted(meta) == sorted(["old.jpg"] + [f"{i}.jpg" for i in range(30)])


def test_sigterm_keeps_the_rows_done_as_ctrl_c_does(photo_dir, tmp_path):
    import shutil
    import signal
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):  # enough that the signal lands mid-run
        shutil.copy(photo_dir / "coffee.jpg", folder / f"{i:02d}.jpg")
    out = tmp_path / "out.tsv"
    args = ["caption", str(folder), "--batch-size", "1", "--metadata", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", *args], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not any(len(f.read_text().splitlines()) > 3 for f in tmp_path.glob(".out.tsv.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # kill, systemd, docker stop
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + 15, as a process killed by SIGTERM reports
    rows = [ln.split("\t") for ln in out.read_text().splitlines()]
    assert f"terminated: kept the {len(rows)} captions done so far in {out}" in err
    assert "Traceback" not in err and 3 <= len(rows) < 60 and all(CLEAN.match(r[1]) for r in rows)
    meta = [json.loads(ln)["file_name"] for ln in (folder / "metadata.jsonl").open()]
    assert meta == [Path(r[0]).name for r in rows]  # metadata.jsonl kept the same rows
    assert not list(tmp_path.rglob(".*.tmp"))


def test_train_refuses_a_run_folder_another_process_trains_into(captions_csv, tmp_path):
    import time

    from captioner.core.errors import TrainingError
    from captioner.serving.jobs import RunLock

    run_dir = tmp_path / "run"
    flags = ["--dataset-format", "captions", "--dataset-path", str(captions_csv), "--quiet"]
    flags += ["--vocab-threshold", "1", "--embed-size", "32", "--hidden-size", "32"]
    lock = RunLock(run_dir)  # as a server job's worker holds it while it trains
    try:
        res = run("train", "--out", str(run_dir), "--epochs", "1", *flags)
    finally:
        lock.release()
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"error: {run_dir} is locked by another training process (pid ")
    assert len(res.stderr.splitlines()) == 1 and f"(pid {os.getpid()})" in res.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no epoch written twice
    # And the other way round: while the command trains, a server worker is refused.
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", "train", "--out", str(run_dir), "--epochs", "500"]
        + flags,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (run_dir / ".lock").read_text().strip() != str(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        with pytest.raises(
            TrainingError, match=f"locked by another training process .pid {proc.pid}"
        ):
            RunLock(run_dir)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
