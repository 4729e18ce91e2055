"""Supervised training jobs: real worker processes, real signals, a real `captioner serve`.

Jobs train a tiny model on the four scikit-image photos (captions_csv), so each run takes
seconds; a job meant to be interrupted asks for many epochs and is stopped or killed early.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from captioner.serving.jobs import EX_LOCKED, SCHEMA, JobRunner, JobStore, process_start
from captioner.serving.server import ServerSettings, create_app

TINY = {
    "dataset_format": "captions",
    "dataset_path": "photos/captions.csv",  # relative to the data root
    "vocab_threshold": 1,
    "embed_size": 48,
    "hidden_size": 96,
    "batch_size": 4,
    "beam_size": 1,
    "device": "cpu",
    "workers": 0,
}


@pytest.fixture
def data_root(tmp_path, captions_csv) -> Path:
    root = tmp_path / "data"
    (root / "photos").mkdir(parents=True)
    for f in captions_csv.parent.iterdir():
        (root / "photos" / f.name).symlink_to(f)
    return root


@pytest.fixture
def client(tmp_path, data_root):
    settings = ServerSettings(state_dir=tmp_path / "state", data_roots=[data_root], max_jobs=1)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def poll(get, until, timeout: float = 60, every: float = 0.05):
    """Call get() until until(value) holds; return the value."""
    end = time.monotonic() + timeout
    while True:
        value = get()
        if until(value):
            return value
        assert time.monotonic() < end, f"timed out; last value: {value}"
        time.sleep(every)


def reaped(pid: int) -> bool:
    """No process (not even a zombie) with this PID is left."""
    return not Path(f"/proc/{pid}").exists()


def test_killed_worker_fails_its_job_and_ends_the_stream(client):
    job = client.post("/api/jobs", json={**TINY, "epochs": 1000}).json()
    job_id = job["id"]
    job = poll(
        lambda: client.get(f"/api/jobs/{job_id}").json(),
        lambda j: j["progress"].get("step") or j["state"] != "running",
    )
    assert job["state"] == "running", job["log"]
    pid = job["pid"]
    assert job["pid_start"] == process_start(pid)  # the worker is identified, not just its PID

    events: list[dict] = []

    def listen() -> None:  # the stream must end by itself once the job has ended
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]) | {"t": time.monotonic()})

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    poll(lambda: events, bool)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    listener.join(timeout=15)
    assert not listener.is_alive(), "the event stream did not end"
    last = events[-1]
    assert last["state"] == "failed" and "killed by signal 9 (SIGKILL)" in last["error"]
    assert last["t"] - killed < 3, f"noticed after {last['t'] - killed:.1f} s"
    print(f"SIGKILL -> job failed on the event stream in {last['t'] - killed:.2f} s")
    assert reaped(pid), "the dead worker was left a zombie"
    # The job can be resumed (it used to stay 'running' and answer 409 forever).
    job = client.post(f"/api/jobs/{job_id}/resume").json()
    assert job["state"] == "running" and job["error"] is None
    assert client.post(f"/api/jobs/{job_id}/stop").json()["state"] == "stopped"


def test_jobs_beyond_the_limit_wait_queued(client):
    first = client.post("/api/jobs", json={**TINY, "epochs": 1000}).json()
    second = client.post("/api/jobs", json={**TINY, "epochs": 1000}).json()
    assert (first["state"], second["state"]) == ("running", "queued")
    # A queued job can be stopped and resumed without ever starting a process.
    assert client.post(f"/api/jobs/{second['id']}/stop").json()["state"] == "stopped"
    assert client.post(f"/api/jobs/{second['id']}/resume").json()["state"] == "queued"
    assert client.post(f"/api/jobs/{first['id']}/resume").status_code == 409
    pid = poll(lambda: client.get(f"/api/jobs/{first['id']}").json()["pid"], bool)
    assert client.post(f"/api/jobs/{first['id']}/stop").json()["state"] == "stopped"
    assert reaped(pid)
    # The freed slot goes to the queued job.
    job = poll(
        lambda: client.get(f"/api/jobs/{second['id']}").json(),
        lambda j: j["state"] != "queued",
        timeout=10,
    )
    assert job["state"] == "running"
    assert client.post(f"/api/jobs/{second['id']}/stop").json()["state"] == "stopped"


def test_a_store_from_before_supervision_is_upgraded(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    old_schema = SCHEMA.replace(",\n    pid_start INTEGER", "")
    assert "pid_start" not in old_schema
    db.execute(old_schema)
    db.execute(
        "INSERT INTO jobs (id, created, updated, state, config, pid) "
        "VALUES ('old', 0, 0, 'running', '{}', 1)"
    )
    db.commit()
    db.close()
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.get("old")
    assert job["pid_start"] is None  # PID 1 is alive, but unverifiable: never adopted
    runner = JobRunner(store, tmp_path / "runs", tmp_path / "models")
    try:
        assert store.get("old")["state"] == "interrupted" and not runner.running()
    finally:
        runner.shutdown()


# --- a real server, killed with SIGKILL while its worker trains ----------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(state: Path, data_root: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "CAPTIONER_TOKEN"}
    cmd = [sys.executable, "-m", "captioner.cli", "serve", "--port", str(port)]
    cmd += ["--state-dir", str(state), "--data-root", str(data_root)]
    with open(log, "ab") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        assert time.monotonic() < end, log.read_text()
        time.sleep(0.1)


def holds_sqlite_write_lock(pid: int) -> bool:
    """Whether `pid` holds a POSIX write lock (SQLite's, mid-transaction) per /proc/locks."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # "1: POSIX ADVISORY WRITE <pid> <dev:inode> <start> <end>"
        if "->" not in fields and fields[1:5] == ["POSIX", "ADVISORY", "WRITE", str(pid)]:
            return True
    return False


def freeze(pid: int) -> None:
    """SIGSTOP the worker, but never inside a SQLite write (it would block everyone)."""
    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.02)
        if not holds_sqlite_write_lock(pid):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("could not pause the worker outside a database write")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc")
def test_server_killed_while_a_worker_trains(tmp_path, data_root):
    from captioner.config import TrainConfig
    from captioner.training.trainer import train

    state, port = tmp_path / "state", free_port()
    url = f"http://127.0.0.1:{port}"
    config = {**TINY, "epochs": 8, "learning_rate": 5e-3}
    # The same run never interrupted, trained meanwhile in this process, to compare with.
    whole: dict = {}

    def train_whole() -> None:
        cfg = TrainConfig(**{**config, "dataset_path": data_root / TINY["dataset_path"]})
        try:
            whole["model"] = train(cfg, tmp_path / "whole")
        except Exception as exc:  # reported by the assertion below
            whole["error"] = exc

    baseline = threading.Thread(target=train_whole, daemon=True)
    baseline.start()
    server = serve(state, data_root, port, tmp_path / "server.log")
    try:
        job_id = httpx.post(f"{url}/api/jobs", json=config).json()["id"]
        job = poll(
            lambda: httpx.get(f"{url}/api/jobs/{job_id}").json(),
            lambda j: j["history"] or j["state"] != "running",
        )
        assert job["state"] == "running", job["log"]
        pid = job["pid"]
        # Pause the worker so it is surely alive through the restart (a real worker just
        # keeps training; this one must not finish before the checks below).
        freeze(pid)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        assert process_start(pid) == job["pid_start"], "the worker died with its server"

        server = serve(state, data_root, port, tmp_path / "server.log")
        job = httpx.get(f"{url}/api/jobs/{job_id}").json()
        assert (job["state"], job["pid"]) == ("running", pid)
        assert f"adopted worker pid {pid}" in job["log"]
        res = httpx.post(f"{url}/api/jobs/{job_id}/resume")
        assert res.status_code == 409 and "still training" in res.json()["detail"]
        # A second training process for the same run folder is refused at once.
        second = subprocess.run(
            [sys.executable, "-m", "captioner.serving.jobs", str(state / "jobs.sqlite")]
            + [job_id, str(state / "runs" / job_id), str(state / "models")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == EX_LOCKED, second.stderr
        assert f"locked by another training process (pid {pid})" in second.stderr
        assert httpx.get(f"{url}/api/jobs/{job_id}").json()["state"] == "running"

        # Stop reaches the adopted (even paused) worker; resume finishes the run.
        stopped = httpx.post(f"{url}/api/jobs/{job_id}/stop", timeout=60).json()
        assert stopped["state"] == "stopped", stopped["log"]
        assert process_start(pid) is None
        assert httpx.post(f"{url}/api/jobs/{job_id}/resume").json()["state"] == "running"
        job = poll(
            lambda: httpx.get(f"{url}/api/jobs/{job_id}").json(),
            lambda j: j["state"] != "running",
            timeout=180,
            every=0.3,
        )
        assert job["state"] == "done", job["log"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    baseline.join(180)
    assert "model" in whole, whole.get("error")
    # Same epochs, losses and dev scores, and the same final (pycocoevalcap) scores.
    run = state / "runs" / job_id
    lines = [
        [
            {k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in f.read_text().splitlines()
        ]
        for f in (run / "metrics.jsonl", tmp_path / "whole" / "metrics.jsonl")
    ]
    assert [h["epoch"] for h in lines[0]] == list(range(1, 9)) and lines[0] == lines[1]
    resumed = json.loads((state / "models" / job_id / "metrics.json").read_text())
    uninterrupted = json.loads((whole["model"] / "metrics.json").read_text())
    assert resumed["dev"] == uninterrupted["dev"]


@pytest.mark.parametrize("when", ["before its checkpoint", "after its checkpoint"])
def test_a_stop_at_an_epochs_checkpoint_loses_no_epoch(when, tmp_path, captions_csv, monkeypatch):
    """A stop (the server's SIGTERM) lands exactly around epoch 3's checkpoint, delivered by a
    hook in this process rather than by timing: after its log line but before its checkpoint
    (epoch 3 is redone), or after its checkpoint but before its ``epoch`` event reached the
    worker. Either way the stopped job's history is its checkpoint's, and the resumed job
    records every epoch once (a stop in the second window once lost epoch 3 for good)."""
    from captioner.config import TrainConfig
    from captioner.serving.jobs import _run
    from captioner.storage import checkpoint
    from captioner.training import trainer

    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    cfg = TrainConfig(**{**TINY, "dataset_path": captions_csv, "epochs": 4})
    job_id = store.create(cfg)
    run_dir, models = tmp_path / "runs" / job_id, tmp_path / "models"
    before, armed, saves = when == "before its checkpoint", [True], []

    def stop() -> None:  # what the server's stop sends; the worker's handler runs at once
        armed.clear()
        signal.raise_signal(signal.SIGTERM)

    real_save, real_train = checkpoint.save_checkpoint, trainer.train

    def save_checkpoint(*args, **kwargs):  # epoch 3's log line is written, its checkpoint not
        saves.append(1)
        if before and armed and len(saves) == 3:
            stop()
        real_save(*args, **kwargs)

    def train(cfg, out, report, data=None):
        def hooked(event):  # the epoch event: epoch 3 is checkpointed, the job not told yet
            if not before and armed and event.phase == "epoch" and event.done == 3:
                stop()
            report(event)

        return real_train(cfg, out, report=hooked, data=data)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr(trainer, "train", train)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert _run(str(db), job_id, str(run_dir), str(models)) == 0
        job = store.get(job_id)
        assert job["state"] == "stopped", job["log"]
        recorded = checkpoint.read_meta(run_dir / "checkpoint")["history"]
        assert [h["epoch"] for h in recorded] == ([1, 2] if before else [1, 2, 3])
        assert job["history"] == recorded  # the job's history agrees with its checkpoint
        # A kill there (SIGKILL: no handler runs) leaves the history without epoch 3 whether
        # or not it was checkpointed; the resumed run's ``resume`` event restores it.
        store.update(job_id, history=[h for h in recorded if h["epoch"] < 3])

        assert _run(str(db), job_id, str(run_dir), str(models)) == 0  # resume
    finally:
        signal.signal(signal.SIGTERM, previous)
    job = store.get(job_id)
    assert job["state"] == "done", job["log"]
    assert [h["epoch"] for h in job["history"]] == [1, 2, 3, 4]
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert job["history"] == log == checkpoint.read_meta(run_dir / "checkpoint")["history"]
    assert f"resuming {run_dir} after epoch {len(recorded)}" in job["log"]
    assert (models / job_id / "model.safetensors").is_file()
