"""Training jobs for the web app: a SQLite store plus one training process per job.

The server never trains in its own process: each job runs `train()` in a spawned child that
writes its progress to SQLite, so the page stays responsive, a job can be stopped with a
signal, and a server restart finds every job (running ones whose process is gone are marked
`interrupted` and can be resumed from their last checkpoint).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

from ..config import TrainConfig
from ..core.atomic import atomic_dir
from ..core.progress import Event, Throttle

TERMINAL = {"done", "failed", "stopped", "interrupted"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    history TEXT NOT NULL DEFAULT '[]',
    log TEXT NOT NULL DEFAULT '',
    model_id TEXT,
    error TEXT,
    pid INTEGER
)"""


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def create(self, cfg: TrainConfig) -> str:
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        now = time.time()
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO jobs (id, created, updated, state, config) VALUES (?,?,?,?,?)",
                (job_id, now, now, "queued", cfg.model_dump_json()),
            )
        return job_id

    def update(self, job_id: str, **fields: object) -> None:
        for key in ("progress", "history"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with closing(self._connect()) as db, db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def append_log(self, job_id: str, line: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE jobs SET log = log || ?, updated = ? WHERE id = ?",
                (line.rstrip("\n") + "\n", time.time(), job_id),
            )

    def get(self, job_id: str) -> dict | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(row) if row else None

    def list(self) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC").fetchall()
        return [_row(r) for r in rows]

    def mark_orphans(self) -> None:
        """Jobs left 'running' by a previous server whose process is gone are interrupted."""
        for job in self.list():
            if job["state"] in ("running", "queued") and not _alive(job["pid"]):
                self.update(
                    job["id"],
                    state="interrupted",
                    pid=None,
                    error="the server stopped while this job ran; resume to continue",
                )


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["config"] = json.loads(d["config"])
    d["progress"] = json.loads(d["progress"])
    d["history"] = json.loads(d["history"])
    return d


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a finished child we have not reaped yet is not alive
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _run(db_path: str, job_id: str, run_dir: str, models_dir: str) -> None:
    """Child process: train, report progress to the store, publish the model when done."""
    from ..training.trainer import train

    store = JobStore(Path(db_path))
    job = store.get(job_id)
    cfg = TrainConfig(**job["config"])
    history = job["history"] if isinstance(job["history"], list) else []
    stopping = {"flag": False}

    def on_term(signum, frame):  # finish cleanly: the last checkpoint is the resume point
        stopping["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    def on_step(event: Event) -> None:
        store.update(job_id, progress=event.metrics)

    steps = Throttle(on_step, interval=0.5)

    def report(event: Event) -> None:
        if event.phase == "train":
            steps(event)
        elif event.phase == "epoch":
            line = {k: v for k, v in event.metrics.items() if not k.startswith("best_")}
            history[:] = [h for h in history if h["epoch"] < line["epoch"]] + [line]
            store.update(job_id, history=history)
            store.append_log(
                job_id,
                f"epoch {line['epoch']}: loss {line['loss']:.3f}, dev "
                f"BLEU-4 {line['dev_BLEU-4']:.3f}, CIDEr {line['dev_CIDEr']:.3f}",
            )

    store.update(job_id, state="running", pid=os.getpid(), error=None)
    store.append_log(job_id, "started")
    try:
        bundle = train(cfg, Path(run_dir), report=report)
        with atomic_dir(Path(models_dir) / job_id) as tmp:  # publish the model whole
            for f in bundle.iterdir():
                shutil.copy2(f, tmp / f.name)
        store.update(job_id, state="done", model_id=job_id, pid=None)
        store.append_log(job_id, f"finished: model {job_id}")
    except KeyboardInterrupt:
        store.update(job_id, state="stopped" if stopping["flag"] else "interrupted", pid=None)
        store.append_log(job_id, "stopped; resume continues from the last finished epoch")
    except Exception as exc:  # reported to the user on the page, never lost
        store.update(job_id, state="failed", error=str(exc), pid=None)
        store.append_log(job_id, f"failed: {exc}")


class JobRunner:
    def __init__(self, store: JobStore, runs_dir: Path, models_dir: Path) -> None:
        self.store, self.runs_dir, self.models_dir = store, Path(runs_dir), Path(models_dir)
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[str, multiprocessing.process.BaseProcess] = {}

    def start(self, job_id: str) -> None:
        proc = self.ctx.Process(
            target=_run,
            daemon=False,
            args=(str(self.store.path), job_id, str(self.runs_dir / job_id), str(self.models_dir)),
        )
        # 'running' before the start, so a child that fails at once is not overwritten.
        self.store.update(job_id, state="running", error=None)
        proc.start()
        self.procs[job_id] = proc
        self.store.update(job_id, pid=proc.pid)

    def stop(self, job_id: str) -> None:
        proc = self.procs.get(job_id)
        if proc is not None and proc.is_alive():
            proc.terminate()  # SIGTERM: the child records 'stopped'
            proc.join(timeout=30)
        job = self.store.get(job_id)
        if job and job["state"] not in TERMINAL:
            self.store.update(job_id, state="stopped", pid=None)

    def running(self) -> list[str]:
        return [j for j, p in self.procs.items() if p.is_alive()]

    def shutdown(self) -> None:
        for job_id in self.running():
            self.stop(job_id)
