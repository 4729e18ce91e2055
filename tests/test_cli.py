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
    assert [Path(p).stem for p, _ in lines] == sorted(PHOTOS)
    assert all(CLEAN.match(c) for _, c in lines), lines
    # Deterministic: the same photos give the same captions, in any batch.
    again = run(
        "caption", "--beam-size", "3", "--batch-size", "1", *[p for p, _ in reversed(lines)]
    )
    assert sorted(again.stdout.splitlines()) == sorted(res.stdout.splitlines())


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
    assert rows[0] == ["image", "caption"]
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
    assert rows[0] == ["image", "caption"] and not list(tmp_path.glob(".out.csv.*"))
    # The formula-looking name was given relative, so its cell starts with "=": neutralised.
    assert rows[1][0] == "'=HYPERLINK(1).jpg" and all(CLEAN.match(r[1]) for r in rows[1:])
