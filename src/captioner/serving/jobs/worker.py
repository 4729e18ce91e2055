"""The worker: the child process (``python -m captioner.serving.jobs``) that trains one job and
records its progress in the store."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from ...config import TrainConfig
from ...core.atomic import atomic_dir
from ...core.errors import TrainingError, validation_message
from ...core.progress import Event
from ..names import write_name
from .process import EX_LOCKED, RunLock, process_start
from .store import JobState, JobStore


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
    try:
        return _train(store, job_id, Path(run_dir), Path(models_dir))
    finally:
        lock.release()


def _train(store: JobStore, job_id: str, run_dir: Path, models_dir: Path) -> int:
    stopping = {"flag": False}

    def on_term(signum, frame):  # finish cleanly: the last checkpoint is the resume point
        stopping["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    me = os.getpid()
    store.update(job_id, state=JobState.RUNNING, pid=me, pid_start=process_start(me), error=None)
    store.append_log(job_id, "started")
    job = store.get(job_id)
    report = _reporter(store, job_id, job["history"])
    training = False  # torch imported: a stop before that must not import it while handling

    def recorded() -> dict:
        """The checkpoint's history, for the job's last update: a stop or error can land
        after an epoch's checkpoint but before its epoch event reached `report`."""
        if not training:
            return {}
        from ...training.trainer import recorded_history

        done = recorded_history(run_dir)
        return {} if done is None else {"history": done}

    try:
        cfg = TrainConfig(**job["config"])  # saved by an older server, or edited: checked again
        from ...training.trainer import train  # imports torch: seconds, shown as "starting"

        training = True
        bundle = train(cfg, run_dir, report=report)
        with atomic_dir(models_dir / job_id) as tmp:  # publish the model whole
            for f in bundle.iterdir():
                shutil.copy2(f, tmp / f.name)
            if job.get("name"):
                write_name(tmp, job["name"])
        store.update(job_id, state=JobState.DONE, model_id=job_id, pid=None)
        store.append_log(job_id, f"finished: model {job_id}")
        return 0
    except KeyboardInterrupt:
        state = JobState.STOPPED if stopping["flag"] else JobState.INTERRUPTED
        store.update(job_id, state=state, pid=None, **recorded())
        store.append_log(job_id, "stopped; resume continues from the last finished epoch")
        return 0
    except Exception as exc:  # reported to the user on the page, never lost
        error = _plain(exc)
        store.update(job_id, state=JobState.FAILED, error=error, pid=None, **recorded())
        store.append_log(job_id, f"failed: {error}")
        return 1


def _plain(exc: Exception) -> str:
    """An error as the page shows it, on one line: a settings error names each field in plain
    words, never with pydantic's own text and its link to pydantic's documentation."""
    if isinstance(exc, ValidationError):
        head, *fields = validation_message(exc, "training settings").splitlines()
        return f"{head} {'; '.join(f.strip() for f in fields)}"
    return str(exc)


def _reporter(store: JobStore, job_id: str, history: object) -> Callable[[Event], None]:
    """The progress callback: phases to `progress`, each epoch's scores to `history` and the
    log. Starts by reporting ``starting`` (the import of torch takes seconds)."""
    history = history if isinstance(history, list) else []
    report_phase = PhaseRecorder(store, job_id)
    report_phase(Event("starting", message="starting the training process"))

    def report(event: Event) -> None:
        report_phase(event)
        if event.phase == "resume":  # the checkpoint's history is the record: take it whole
            history[:] = event.metrics["history"]
            store.update(job_id, history=history)
        elif event.phase == "epoch":
            line = {k: v for k, v in event.metrics.items() if not k.startswith("best_")}
            history[:] = [h for h in history if h["epoch"] < line["epoch"]] + [line]
            store.update(job_id, history=history)
            store.append_log(
                job_id,
                f"epoch {line['epoch']}: loss {line['loss']:.3f}, dev "
                f"BLEU-4 {line['dev_BLEU-4']:.3f}, CIDEr {line['dev_CIDEr']:.3f}",
            )

    return report


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m captioner.serving.jobs DB JOB_ID RUN_DIR MODELS_DIR")
        return 2
    return _run(*argv)
