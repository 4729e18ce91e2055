"""The command line's own inputs and outputs, as a user meets them (the real command in a
subprocess): file names that hold a tab or a newline, paths and folders that cannot be read,
and earlier outputs that --skip-existing cannot trust. The image corpus is test_bad_inputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

CLEAN = re.compile(r"^[a-z0-9']+( [a-z0-9']+){2,19}$")  # 3-20 plain words, nothing else


def photo() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut())  # a real 512x512 photo


def captioner(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "captioner", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("out.csv", b"image,caption,confidence,tags\n\xff.jpg,a cat,0.5,\n", "line 2 is not UTF-8"),
        ("out.tsv", b"a.jpg\ta cat\t0.500\t\n\xfe.jpg\ta cat\n", "line 2 is not UTF-8 text"),
        ("out.jsonl", b"\xff\n", "line 1 is not UTF-8 text"),
        ("out.jsonl", b'{"image": 5}\n', 'line 1 is not a JSON object with an "image" file name'),
        ("out.jsonl", b'{"image": "a.jpg"}\n[1]\n', "line 2 is not a JSON object with an"),
        ("out.jsonl", b'{"image": "a.jpg"}\n{"ima\n', "line 2 is not a JSON object with an"),
        ("out.csv", b"name,text\nx.jpg,a cat\n", "line 1 is not the header image,caption,"),
        ("metadata.jsonl", b'{"file_name": "a.jpg"}\n\x80\n', "line 2 is not UTF-8 text"),
        ("metadata.jsonl", b'{"file_name": 5}\n', "line 1 is not an ImageFolder entry"),
        ("metadata.jsonl", b"not json\n", "line 1 is not an ImageFolder entry"),
    ],
)
def test_a_corrupt_earlier_output_is_one_line_and_left_as_it_is(tmp_path, name, content, message):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo().save(folder / "a.jpg")
    if name == "metadata.jsonl":  # read (its entries are kept) with or without --skip-existing
        path, flags = folder / name, ["--metadata"]
    else:
        path, flags = tmp_path / name, ["--out", str(tmp_path / name), "--skip-existing"]
    path.write_bytes(content)
    res = captioner("caption", str(folder), *flags)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"error: {flags[0]} {path}: {message}"), res.stderr
    assert len(res.stderr.splitlines()) == 1 and "fix or remove that line" in res.stderr
    assert path.read_bytes() == content and not list(tmp_path.rglob(".*.tmp"))


def test_tsv_escapes_tabs_and_newlines_in_names_and_resumes_them(tmp_path):
    from captioner.core.csvsafe import tsv_text

    folder = tmp_path / "odd"
    folder.mkdir()
    # "back\\tslash" holds a backslash and a t: it must not come back as a tab.
    names = ["tab\there.jpg", "new\nline.jpg", "car\rriage.jpg", "back\\slash.jpg"]
    names += ["back\\tslash.jpg", "plain.jpg"]
    for name in names:
        photo().resize((128, 128)).save(folder / name)
    out = tmp_path / "out.tsv"
    res = captioner("caption", str(folder), "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = out.read_bytes().decode().split("\n")
    assert lines.pop() == "" and len(lines) == len(names) and "\r" not in "".join(lines)
    cells = [line.split("\t") for line in lines]
    assert all(len(c) == 4 and CLEAN.match(c[1]) for c in cells), cells
    assert sorted(Path(tsv_text(c[0])).name for c in cells) == sorted(names)
    assert "tab\\there.jpg" in {Path(c[0]).name for c in cells}  # \t written as backslash, t
    again = captioner("caption", str(folder), "--out", str(out), "--skip-existing")
    assert again.returncode == 0 and f"skipping {len(names)} images" in again.stderr, again.stderr
    assert out.read_bytes().decode().count("\n") == len(names)  # nothing captioned twice


def test_a_path_that_cannot_be_looked_at_is_one_line(tmp_path):
    """Works as root too: a name longer than the system allows (ENAMETOOLONG)."""
    long = tmp_path / ("x" * 300) / "a.jpg"
    res = captioner("caption", str(long), str(tmp_path / "absent.jpg"))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.splitlines() == [
        f"error: {long}: cannot look at it (File name too long); check the name and that its "
        "folders may be read",
        f"error: {tmp_path / 'absent.jpg'}: no such file or folder",
    ]


@pytest.fixture
def shared_tmp():
    """A folder another user may enter (pytest's own are root-only), removed afterwards."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="captioner-perm-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path)


def test_unreadable_folders_are_named_and_the_rest_captioned(shared_tmp):
    """A file inside a mode-000 folder, and a mode-000 folder inside one given: one line each,
    exit status 1, the readable photo captioned. Root ignores mode 000, so as root the command
    runs as the user nobody through setpriv (skipped where that is not possible)."""
    import shutil

    photos, closed = shared_tmp / "photos", shared_tmp / "closed"
    (photos / "locked").mkdir(parents=True)
    closed.mkdir()
    for path in (photos / "a.jpg", photos / "locked" / "b.jpg", closed / "c.jpg"):
        photo().resize((128, 128)).save(path)
        path.chmod(0o644)
    cache = shared_tmp / "cache"
    cache.mkdir()
    cache.chmod(0o777)  # the user nobody writes the encoder's ONNX export there
    env = {**os.environ, "CAPTIONER_CACHE": str(cache), "HOME": str(cache)}
    user: list[str] = []
    if os.geteuid() == 0:
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = [*user, sys.executable, "-c", "import os, captioner; print(os.geteuid())"]
        who = shutil.which("setpriv") and subprocess.run(probe, capture_output=True, env=env)
        if not who or who.stdout.strip() != b"65534":
            pytest.skip("running as root (which ignores mode 000), and cannot run as nobody")
    (photos / "locked").chmod(0)
    closed.chmod(0)
    res = subprocess.run(
        [*user, sys.executable, "-m", "captioner", "caption", str(photos), str(closed / "c.jpg")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=shared_tmp,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {photos / 'locked'}: cannot list this folder (Permission denied); its images "
        "were skipped: allow reading it (chmod a+rx) or leave it out",
        f"error: {closed / 'c.jpg'}: cannot look at it (Permission denied); check the name and "
        "that its folders may be read",
    ], res.stderr
    (line,) = res.stdout.splitlines()
    assert line.startswith(f"{photos / 'a.jpg'}\t") and CLEAN.match(line.split("\t")[1])
