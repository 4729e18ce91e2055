"""Process identity and the run-folder lock: what lets a restarted server tell its
predecessor's live workers from recycled PIDs, and keeps a run folder to one writer."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ...core.errors import TrainingError

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None

EX_LOCKED = 75  # worker exit status: its run folder is locked by another process
LOCK_FILE = ".lock"
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
