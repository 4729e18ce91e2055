"""The jobs table: one SQLite row per training job, shared by the server and its workers."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from enum import StrEnum
from pathlib import Path

from ...config import TrainConfig


class JobState(StrEnum):
    """A job's `state` column; the values are what the database and the JSON API hold."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # asked to stop: resume continues from the last checkpoint
    INTERRUPTED = "interrupted"  # its worker vanished (a server restart, a locked run folder)


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.STOPPED, JobState.INTERRUPTED})
ACTIVE = (JobState.QUEUED, JobState.RUNNING)
RESUMABLE = (JobState.STOPPED, JobState.INTERRUPTED, JobState.FAILED)

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
    pid INTEGER,
    pid_start INTEGER,
    name TEXT
)"""


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
            cols = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            if "pid_start" not in cols:  # a store written before workers were supervised
                db.execute("ALTER TABLE jobs ADD COLUMN pid_start INTEGER")
            if "name" not in cols:  # a store written before models had names
                db.execute("ALTER TABLE jobs ADD COLUMN name TEXT")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def create(self, cfg: TrainConfig, name: str | None = None) -> str:
        """A queued job; `name` (checked by names.check_name) becomes its model's name."""
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        now = time.time()
        progress = json.dumps({"phase": "queued", "message": "waiting for a free training slot"})
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO jobs (id, created, updated, state, config, name, progress) "
                "VALUES (?,?,?,?,?,?,?)",
                (job_id, now, now, JobState.QUEUED, cfg.model_dump_json(), name, progress),
            )
        return job_id

    def update(self, job_id: str, *, only_if: tuple[str, ...] = (), **fields: object) -> bool:
        """Set fields (only while the job's state is one of `only_if`, when given); returns
        whether the row changed. The condition makes check-and-set one statement, so the
        server and a worker never overwrite each other's final state."""
        for key in ("progress", "history"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        fields["updated"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        where, args = "id = ?", [job_id]
        if only_if:
            where += f" AND state IN ({','.join('?' * len(only_if))})"
            args += list(only_if)
        with closing(self._connect()) as db, db:
            cur = db.execute(f"UPDATE jobs SET {cols} WHERE {where}", (*fields.values(), *args))
            return cur.rowcount > 0

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

    def queued(self) -> list[str]:
        """Queued job ids, longest waiting first (queuing or resuming sets `updated`)."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state = ? ORDER BY updated", (JobState.QUEUED,)
            )
            return [r["id"] for r in rows]


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["config"] = json.loads(d["config"])
    d["progress"] = json.loads(d["progress"])
    d["history"] = json.loads(d["history"])
    return d
