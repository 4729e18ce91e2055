"""Training jobs for the web app: a SQLite store plus one supervised training process per job.

The server never trains in its own process: each job runs `train()` in a child process
(``python -m captioner.serving.jobs``, `worker.py`) that writes its progress to SQLite
(`store.py`), so the page stays responsive, a job can be stopped with a signal, and a server
restart finds every job.

Supervision (`JobRunner`, `supervisor.py`):

- A monitor thread polls every worker a few times a second. It reaps finished children (no
  zombies), and a worker that died without recording a result (SIGKILL, the OOM killer, a crash)
  leaves its job `failed` with the reason, e.g. "killed by signal 9 (SIGKILL)".
- At most `max_jobs` workers run at once; other jobs wait `queued` and start, oldest first,
  when a slot frees.
- The store keeps each worker's PID and start time (field 22 of /proc/PID/stat, `process.py`),
  so a restarted server tells its predecessor's workers from recycled PIDs. A restarted server
  ADOPTS a live worker: training goes on (a restart loses no work), the job stays `running`,
  stop signals it, and the monitor watches its PID. Not being its parent, the new server cannot
  learn how an adopted worker ended: one that vanishes without recording a result leaves its job
  `interrupted` (resume continues from the last checkpoint). Jobs whose worker is gone are
  marked `interrupted` at start-up.
- The worker holds an exclusive lock (flock) on RUN/.lock for its lifetime (`RunLock`), so two
  processes can never train into one run folder: a second one exits at once (status 75) naming
  the first. Its output (warnings, tracebacks) goes to RUN/worker.log.
"""

from .process import EX_LOCKED, LOCK_FILE, RunLock, max_workers, process_start, same_process
from .store import ACTIVE, RESUMABLE, SCHEMA, TERMINAL, JobState, JobStore
from .supervisor import WORKER_LOG, JobRunner, Worker, describe_exit
from .worker import PhaseRecorder, _run, main  # _run: tests drive a worker in-process

__all__ = [
    "ACTIVE",
    "EX_LOCKED",
    "LOCK_FILE",
    "RESUMABLE",
    "SCHEMA",
    "TERMINAL",
    "WORKER_LOG",
    "_run",
    "JobRunner",
    "JobState",
    "JobStore",
    "PhaseRecorder",
    "RunLock",
    "Worker",
    "describe_exit",
    "main",
    "max_workers",
    "process_start",
    "same_process",
]
