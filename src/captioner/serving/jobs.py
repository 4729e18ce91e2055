"""Training jobs for the web app: a SQLite store plus one supervised training process per job.

The server never trains in its own process: each job runs `train()` in a child process
(``python -m captioner.serving.jobs``) that writes its progress to SQLite, so the page stays
responsive, a job can be stopped with a signal, and a server restart finds every job.

Supervision (`JobRunner`):

- A monitor thread polls every worker a few times a second. It reaps finished children (no
  zombies), and a worker that died without recording a result (SIGKILL, the OOM killer, a crash)
  leaves its job `failed` with the reason, e.g. "killed by signal 9 (SIGKILL)".
- At most `max_jobs` workers run at once; other jobs wait `queued` and start, oldest first,
  when a slot frees.
- The store keeps each worker's PID and start time (field 22 of /proc/PID/stat), so a restarted
  server tells its predecessor's workers from recycled PIDs. A restarted server ADOPTS a live
  worker: training goes on (a restart loses no work), the job stays `running`, stop signals it,
  and the monitor watches its PID. Not being its parent, the new server cannot learn how an
  adopted worker ended: one that vanishes without recording a result leaves its job
  `interrupted` (resume continues from the last checkpoint). Jobs whose worker is gone are
  marked `interrupted` at start-up.
- The worker holds an exclusive lock (flock) on RUN/.lock for its lifetime, so two processes can
  never train into one run folder: a second one exits at once (status 75) naming the first.
  Its output (warnings, tracebacks) goes to RUN/worker.log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig
from ..core.atomic import atomic_dir
from ..core.errors import TrainingError
from ..core.progress import Event
from .names import write_name

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None

log = logging.getLogger(__name__)

TERMINAL = {"done", "failed", "stopped", "interrupted"}
ACTIVE = ("queued", "running")
EX_LOCKED = 75  # worker exit status: its run folder is locked by another process
WORKER_LOG = "worker.log"
LOCK_FILE = ".lock"

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
                (job_id, now, now, "queued", cfg.model_dump_json(), name, progress),
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
            rows = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY updated")
            return [r["id"] for r in rows]


def _row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["config"] = json.loads(d["config"])
    d["progress"] = json.loads(d["progress"])
    d["history"] = json.loads(d["history"])
    return d


# --- processes -----------------------------------------------------------------------------

HAVE_PROC = Path("/proc/self/stat").exists()


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot, /proc/PID/stat field 22); None if
    there is no such live process. With the PID this names one process: PIDs are recycled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in (...) may hold spaces
    if fields[0] in ("Z", "X"):  # a zombie has finished
        return None
    return int(fields[19])


def same_process(pid: int | None, start: int | None) -> bool:
    """Whether `pid` is still the process that started at `start`. Without /proc (macOS) only
    the PID can be checked."""
    if not pid:
        return False
    if HAVE_PROC:
        return start is not None and process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def max_workers() -> int:
    """The most image-loading processes a job may ask for: one per CPU core."""
    return os.cpu_count() or 1


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        hint = " (out of memory?)" if -code == getattr(signal, "SIGKILL", None) else ""
        return f"was killed by signal {-code} ({name}){hint}"
    if code == 0:
        return "exited without recording a result"
    return f"exited with status {code}"


def _last_line(path: Path, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - limit))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "")


class RunLock:
    """An exclusive lock on a run folder, held until `release` or the process ends (the
    kernel drops it even after SIGKILL, so a crash never leaves a stale lock)."""

    def __init__(self, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise TrainingError(
                f"{run_dir} is locked by another training process (pid {holder}); "
                "two processes may never train into one run folder: stop that job, or wait "
                "for it to finish, then resume"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


# --- the worker (child process) ------------------------------------------------------------


class PhaseRecorder:
    """Keeps a job's `progress` in the store from every progress event, so the page can show
    each phase from the first second: ``starting``, ``data``, ``vocab``, ``features`` (images
    done / total, images per second, ETA), ``train`` (epoch, step, loss, whole-run ETA), ``dev``,
    ``epoch``, ``save``, ``done``. ``phases`` lists every phase seen (done, total, started,
    updated; one entry per feature extraction).

    `progress` holds the current phase (``phase``, ``message``, ``done``, ``total``,
    ``phase_started``), the last training step's metrics at the top level (``epoch``, ``step``,
    ``loss``, ``eta_s``..., and ``train_phase``: xe or scst), and the last ``features`` and
    ``dev`` counts under those keys. A
    new phase, message or stage is written at once; counts at most every `interval` seconds
    (and always the last one). Each new message also goes to the job's log."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.5) -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self.progress: dict = {}
        self.last_write = 0.0

    def __call__(self, event: Event) -> None:
        p, now = self.progress, time.time()
        key = (p.get("phase"), p.get("message"), p.get("stage"))
        if event.phase != p.get("phase"):
            p["phase_started"] = now
        p.update(phase=event.phase, done=event.done, total=event.total)
        if event.message:
            p["message"] = event.message
        elif event.phase != key[0]:
            p.pop("message", None)
        m = event.metrics
        if event.phase == "features":
            p["features"] = {"done": event.done, "total": event.total, **m}
            p["stage"] = m.get("stage")
        else:
            p.pop("stage", None)
        if event.phase == "train":  # its metrics' own "phase" is xe or scst
            p.update({k: v for k, v in m.items() if k != "phase"}, train_phase=m.get("phase"))
        elif event.phase == "dev":
            p["dev"] = {"done": event.done, "total": event.total}
        elif event.phase == "vocab":
            p.setdefault("data", {}).update({k: v for k, v in m.items() if isinstance(v, int)})
        # Every phase seen so far, in order, with its latest counts (one entry per feature
        # extraction): the page lists them even when a snapshot between two phases is missed.
        slot = f"features: {event.message}" if event.phase == "features" else event.phase
        seen = p.setdefault("phases", {})
        entry = seen.setdefault(slot, {"phase": event.phase, "started": now})
        entry.update(done=event.done, total=event.total, updated=now)
        if event.message and event.phase not in ("train", "dev"):
            entry["message"] = event.message
        if "images_per_s" in m:
            entry["images_per_s"] = m["images_per_s"]
        changed = (p.get("phase"), p.get("message"), p.get("stage")) != key
        final = event.total and event.done >= event.total
        if changed or final or now - self.last_write >= self.interval:
            self.last_write = now
            self.store.update(self.job_id, progress=p)
        if event.message and event.message != key[1] and event.phase != "dev":  # dev: per epoch
            self.store.append_log(self.job_id, event.message)
        if event.phase == "features" and final and "images_per_s" in m:
            self.store.append_log(
                self.job_id,
                f"{event.message}: {event.total} images, {m['images_per_s']:.1f} images/s",
            )


def _run(db_path: str, job_id: str, run_dir: str, models_dir: str) -> int:
    """Child process: train, report progress to the store, publish the model when done."""
    store = JobStore(Path(db_path))
    try:
        lock = RunLock(Path(run_dir))
    except TrainingError as exc:  # the job belongs to the process holding the lock: no state
        store.append_log(job_id, f"a second training process was refused: {exc}")
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EX_LOCKED
    stopping = {"flag": False}

    def on_term(signum, frame):  # finish cleanly: the last checkpoint is the resume point
        stopping["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    me = os.getpid()
    store.update(job_id, state="running", pid=me, pid_start=process_start(me), error=None)
    store.append_log(job_id, "started")
    job = store.get(job_id)
    cfg = TrainConfig(**job["config"])
    history = job["history"] if isinstance(job["history"], list) else []
    report_phase = PhaseRecorder(store, job_id)
    report_phase(Event("starting", message="starting the training process"))

    def report(event: Event) -> None:
        report_phase(event)
        if event.phase == "epoch":
            line = {k: v for k, v in event.metrics.items() if not k.startswith("best_")}
            history[:] = [h for h in history if h["epoch"] < line["epoch"]] + [line]
            store.update(job_id, history=history)
            store.append_log(
                job_id,
                f"epoch {line['epoch']}: loss {line['loss']:.3f}, dev "
                f"BLEU-4 {line['dev_BLEU-4']:.3f}, CIDEr {line['dev_CIDEr']:.3f}",
            )

    try:
        from ..training.trainer import train  # imports torch: seconds, shown as "starting"

        bundle = train(cfg, Path(run_dir), report=report)
        with atomic_dir(Path(models_dir) / job_id) as tmp:  # publish the model whole
            for f in bundle.iterdir():
                shutil.copy2(f, tmp / f.name)
            if job.get("name"):
                write_name(tmp, job["name"])
        store.update(job_id, state="done", model_id=job_id, pid=None)
        store.append_log(job_id, f"finished: model {job_id}")
        return 0
    except KeyboardInterrupt:
        store.update(job_id, state="stopped" if stopping["flag"] else "interrupted", pid=None)
        store.append_log(job_id, "stopped; resume continues from the last finished epoch")
        return 0
    except Exception as exc:  # reported to the user on the page, never lost
        store.update(job_id, state="failed", error=str(exc), pid=None)
        store.append_log(job_id, f"failed: {exc}")
        return 1
    finally:
        lock.release()


# --- the supervisor (server side) ----------------------------------------------------------


@dataclass
class Worker:
    """A training process: our child (`popen`), or adopted from an earlier server (None)."""

    pid: int
    start: int | None
    popen: subprocess.Popen | None = None

    def finished(self) -> tuple[bool, int | None]:
        """(ended, exit status); the status is None for an adopted worker."""
        if self.popen is not None:
            code = self.popen.poll()  # reaps a finished child: no zombies
            return code is not None, code
        return not same_process(self.pid, self.start), None

    def signal(self, sig: int) -> None:
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.send_signal(sig)
        elif same_process(self.pid, self.start):  # never signal a recycled PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.finished()[0]:
            if time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True


class JobRunner:
    """Starts, queues, watches and stops the training processes of one server."""

    def __init__(
        self,
        store: JobStore,
        runs_dir: Path,
        models_dir: Path,
        max_jobs: int = 1,
        poll_s: float = 0.2,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.store, self.runs_dir, self.models_dir = store, Path(runs_dir), Path(models_dir)
        self.max_jobs, self.poll_s, self.stop_timeout_s = max(1, max_jobs), poll_s, stop_timeout_s
        self.workers: dict[str, Worker] = {}
        self.stopping: set[str] = set()  # stops we asked for: a worker killed by them is stopped
        self.lock = threading.RLock()
        self.closing = threading.Event()
        self._recover()
        with self.lock:
            self._schedule()
        self.monitor = threading.Thread(target=self._watch, name="job-monitor", daemon=True)
        self.monitor.start()

    # -- start-up

    def _recover(self) -> None:
        """Adopt the live workers of an earlier server; jobs whose worker is gone are
        interrupted (queued jobs stay queued and start when a slot frees)."""
        for job in self.store.list():
            if job["state"] != "running":
                continue
            pid, start = job["pid"], job["pid_start"]
            if same_process(pid, start):
                self.workers[job["id"]] = Worker(pid, start)
                self.store.append_log(job["id"], f"adopted worker pid {pid} after a restart")
            elif self.store.update(
                job["id"],
                only_if=("running",),
                state="interrupted",
                pid=None,
                error="the server stopped while this job ran; resume to continue",
            ):
                self.store.append_log(job["id"], "interrupted: its worker is gone")

    # -- the public operations (called from request threads)

    def submit(self, job_id: str) -> None:
        """Queue a new or resumed job; it starts now if a slot is free."""
        with self.lock:
            if job_id in self.workers:
                raise TrainingError(f"job {job_id} is still running; stop it first")
            self.store.update(job_id, state="queued", error=None, pid=None, pid_start=None)
            self._schedule()

    def active(self, job_id: str) -> bool:
        with self.lock:
            return job_id in self.workers

    def running(self) -> list[str]:
        with self.lock:
            return list(self.workers)

    def stop(self, job_id: str) -> None:
        """SIGTERM the worker (it records `stopped` after its last checkpoint); SIGKILL after
        `stop_timeout_s`. A queued job is just marked stopped."""
        with self.lock:
            worker = self.workers.get(job_id)
            if worker is None:
                self.store.update(job_id, only_if=ACTIVE, state="stopped", pid=None)
                return
            self.stopping.add(job_id)
        self._terminate([worker])
        self.check()

    def shutdown(self) -> None:
        """The server is stopping: stop every worker (jobs can be resumed later)."""
        self.closing.set()
        with self.lock:
            self.stopping.update(self.workers)
            workers = list(self.workers.values())
        self._terminate(workers)
        self.check(schedule=False)

    # -- supervision

    def _terminate(self, workers: list[Worker]) -> None:
        for w in workers:
            w.signal(signal.SIGTERM)
            if hasattr(signal, "SIGCONT"):  # a paused (SIGSTOP) worker must run to exit
                w.signal(signal.SIGCONT)
        end = time.monotonic() + self.stop_timeout_s
        for w in workers:
            if not w.wait(max(0.0, end - time.monotonic())):
                log.warning("training process %d ignored SIGTERM; killing it", w.pid)
                w.signal(getattr(signal, "SIGKILL", signal.SIGTERM))
                w.wait(5)

    def _watch(self) -> None:
        while not self.closing.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # the monitor must outlive any one bad poll (e.g. a locked db)
                log.exception("job monitor")

    def check(self, schedule: bool = True) -> None:
        """Record how finished workers ended, then start queued jobs in the free slots."""
        with self.lock:
            for job_id, worker in list(self.workers.items()):
                ended, code = worker.finished()
                if ended:
                    del self.workers[job_id]
                    self._record_end(job_id, worker, code)
            if schedule and not self.closing.is_set():
                self._schedule()

    def _record_end(self, job_id: str, worker: Worker, code: int | None) -> None:
        asked = job_id in self.stopping
        self.stopping.discard(job_id)
        if asked:
            state, error = "stopped", None
        elif worker.popen is None:
            state, error = (
                "interrupted",
                f"the training process (pid {worker.pid}, adopted after a server restart) "
                "ended without recording a result; resume to continue",
            )
        elif code == EX_LOCKED:  # another process trains into the folder: not this job's failure
            state = "interrupted"
            error = f"{_last_line(self.runs_dir / job_id / WORKER_LOG)}; resume once it has ended"
        else:
            error = f"the training process {describe_exit(code or 0)}"
            if code and code > 0 and (last := _last_line(self.runs_dir / job_id / WORKER_LOG)):
                error += f": {last}"
            state, error = "failed", error + "; resume continues from the last finished epoch"
        # Only if the worker did not record its own ending (done, failed, stopped).
        if self.store.update(job_id, only_if=ACTIVE, state=state, error=error, pid=None):
            self.store.append_log(job_id, f"{state}: {error}" if error else state)

    def _schedule(self) -> None:
        if len(self.workers) >= self.max_jobs:
            return
        for job_id in self.store.queued():
            if len(self.workers) >= self.max_jobs:
                return
            self._launch(job_id)

    def _launch(self, job_id: str) -> None:
        run_dir = self.runs_dir / job_id
        run_dir.mkdir(parents=True, exist_ok=True)
        # 'running' before the start, so a child that fails at once is not overwritten.
        self.store.update(job_id, state="running", error=None)
        args = [str(self.store.path), job_id, str(run_dir), str(self.models_dir)]
        try:
            with open(run_dir / WORKER_LOG, "ab") as out:
                popen = subprocess.Popen(
                    [sys.executable, "-m", "captioner.serving.jobs", *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        except OSError as exc:
            self.store.update(job_id, state="failed", error=f"cannot start training: {exc}")
            return
        start = process_start(popen.pid)
        self.workers[job_id] = Worker(popen.pid, start, popen)
        self.store.update(job_id, only_if=("running",), pid=popen.pid, pid_start=start)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m captioner.serving.jobs DB JOB_ID RUN_DIR MODELS_DIR")
        return 2
    return _run(*argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
