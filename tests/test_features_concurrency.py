"""Two processes extracting the same new features: one writes, the other waits and reads.

The processes are real; they meet at a chosen point through files: the first stops after its
first batch until the second says (through its progress reports) that it is waiting.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from captioner.vision.features import extract_features

WORKER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from captioner.vision.features import extract_features

images, cache, role, sync, out = json.loads(sys.argv[1]), *sys.argv[2:]
sync = Path(sync)

def report(event):
    print(json.dumps({"done": event.done, "message": event.message}), flush=True)
    if role == "second" and "waiting" in event.message:
        (sync / "second-waiting").touch()
    if role != "second" and event.done > 0 and not (sync / "first-started").exists():
        (sync / "first-started").touch()
        end = time.time() + (1e9 if role == "doomed" else 30)
        while not (sync / "second-waiting").exists() and time.time() < end:
            time.sleep(0.05)
        if role == "doomed":
            time.sleep(1e9)  # killed here, holding the lock with a partial file written

feats = extract_features(
    [Path(p) for p in images], "efficientnet_lite0", cache_dir=Path(cache), batch_size=1,
    workers=0, report=report,
)
np.save(out, np.asarray(feats))
"""


def start(role: str, images: list[Path], tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(list(map(str, images))), str(tmp / "cache")]
        + [role, str(tmp), str(tmp / f"{role}.npy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < end, f"{path.name} never appeared"
        time.sleep(0.05)


def events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def images(photo_dir, tmp_path) -> list[Path]:
    """Photos in a new folder: features nobody has extracted yet."""
    (tmp_path / "photos").mkdir()
    for p in sorted(photo_dir.glob("*.jpg")):
        shutil.copy(p, tmp_path / "photos" / p.name)
    return sorted((tmp_path / "photos").glob("*.jpg"))


def test_two_processes_extracting_the_same_features_both_succeed(images, tmp_path):
    first = start("first", images, tmp_path)
    wait_for(tmp_path / "first-started", first)  # first is writing, one batch done
    second = start("second", images, tmp_path)
    out_first, out_second = first.communicate(timeout=120)[0], second.communicate(timeout=120)[0]
    assert first.returncode == 0, out_first
    assert second.returncode == 0, out_second
    assert (tmp_path / "second-waiting").exists()  # the second did meet the lock
    said = [e["message"] for e in events(out_second)]
    assert any("waiting for another process" in m for m in said)
    assert any("cached" in m for m in said)  # ...and then read the first one's file
    a, b = np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy")
    assert a.shape == (len(images), 1280) and np.array_equal(a, b)
    cache = tmp_path / "cache"
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob("*.partial.*"))


def test_a_waiter_resumes_when_the_writer_dies(images, tmp_path):
    doomed = start("doomed", images, tmp_path)
    wait_for(tmp_path / "first-started", doomed)
    second = start("second", images, tmp_path)
    wait_for(tmp_path / "second-waiting", second)
    doomed.send_signal(signal.SIGKILL)  # the kernel drops its lock; its partial file stays
    doomed.wait(10)
    out = second.communicate(timeout=120)[0]
    assert second.returncode == 0, out
    counts = [e["done"] for e in events(out) if "waiting" not in e["message"]]
    assert counts[0] == 1, out  # resumed after the dead writer's one finished batch
    resumed = np.load(tmp_path / "second.npy")
    whole = extract_features(images, "efficientnet_lite0", cache_dir=tmp_path / "ref", workers=0)
    assert np.allclose(resumed, whole, atol=1e-2)
