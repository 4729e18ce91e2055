"""The supervisor (server side): starts, queues, watches and stops the worker processes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import TrainingError
from .process import EX_LOCKED, process_start, same_process
from .store import ACTIVE, JobState, JobStore

log = logging.getLogger(__name__)

WORKER_LOG = "worker.log"


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
            if job["state"] != JobState.RUNNING:
                continue
            pid, start = job["pid"], job["pid_start"]
            if same_process(pid, start):
                self.workers[job["id"]] = Worker(pid, start)
                self.store.append_log(job["id"], f"adopted worker pid {pid} after a restart")
            elif self.store.update(
                job["id"],
                only_if=(JobState.RUNNING,),
                state=JobState.INTERRUPTED,
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
            self.store.update(job_id, state=JobState.QUEUED, error=None, pid=None, pid_start=None)
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
                self.store.update(job_id, only_if=ACTIVE, state=JobState.STOPPED, pid=None)
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
            state, error = JobState.STOPPED, None
        elif worker.popen is None:
            state, error = (
                JobState.INTERRUPTED,
                f"the training process (pid {worker.pid}, adopted after a server restart) "
                "ended without recording a result; resume to continue",
            )
        elif code == EX_LOCKED:  # another process trains into the folder: not this job's failure
            state = JobState.INTERRUPTED
            error = f"{_last_line(self.runs_dir / job_id / WORKER_LOG)}; resume once it has ended"
        else:
            error = f"the training process {describe_exit(code or 0)}"
            if code and code > 0 and (last := _last_line(self.runs_dir / job_id / WORKER_LOG)):
                error += f": {last}"
            state = JobState.FAILED
            error += "; resume continues from the last finished epoch"
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
        self.store.update(job_id, state=JobState.RUNNING, error=None)
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
            self.store.update(job_id, state=JobState.FAILED, error=f"cannot start training: {exc}")
            return
        start = process_start(popen.pid)
        self.workers[job_id] = Worker(popen.pid, start, popen)
        self.store.update(job_id, only_if=(JobState.RUNNING,), pid=popen.pid, pid_start=start)
