"""Training: the settings schema the Train page builds its form from, and the jobs (create,
list, stop, resume, follow). Each job is a worker process supervised by `jobs.JobRunner`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...config import TrainConfig, flat_schema, make_config, preset_values, presets, setting_names
from ..datapaths import (
    DataPathError,
    absolute_roots,
    confine_dataset_images,
    confine_paths,
    path_fields,
)
from ..guard import TOKEN, Access
from ..jobs import RESUMABLE, TERMINAL, JobRunner, JobStore, max_workers
from ..names import check_name
from .common import Services, json_object

SERVER_DECIDES = ("cache_dir", "device")  # settings a web user never sets


def add_training_routes(app: FastAPI, services: Services) -> None:
    settings = services.settings
    store = JobStore(settings.state_dir / "jobs.sqlite")
    # Adopts the live workers of an earlier server, marks lost ones interrupted (jobs/).
    runner = JobRunner(
        store, settings.state_dir / "runs", services.models.dir, max_jobs=settings.max_jobs
    )
    app.state.runner = runner  # stopped with the server (create_app's lifespan)
    roots = absolute_roots(settings.data_roots)  # symlinks kept: see datapaths.py

    @app.get("/api/config/schema")
    @TOKEN
    def config_schema() -> dict:
        """TrainConfig's JSON schema (defaults, limits, choices, help; decoding's settings
        flat) and the presets: the Train page builds its form from this."""
        schema = flat_schema()
        for name in SERVER_DECIDES:
            schema["properties"].pop(name, None)
        return {"schema": schema, "presets": {p: preset_values(p) for p in presets()}}

    @app.post("/api/jobs", status_code=201)
    @Access(body_required=True)
    async def create_job(request: Request) -> dict:
        body = await json_object(request, "send the training settings as a JSON object")
        cfg, name = await run_in_threadpool(job_config, body, roots)  # reads the dataset
        check_room(store, settings.max_queued)  # no await from here to create: no race
        job_id = store.create(cfg, name)
        runner.submit(job_id)  # starts now, or waits queued for a free slot
        return store.get(job_id)

    _add_job_routes(app, store, runner, settings.max_queued)


def check_room(store: JobStore, max_queued: int) -> None:
    """429 when `max_queued` jobs already wait for a training slot: each queued job holds the
    server's next hours of CPU, and the queue is no place to store plans."""
    waiting = len(store.queued())
    if waiting >= max_queued:
        raise HTTPException(
            429,
            f"{waiting} training jobs are already waiting for a free slot (the server's "
            f"--max-queued is {max_queued}); wait for one to start, or stop one with "
            "POST /api/jobs/{id}/stop",
            headers={"Retry-After": "60"},
        )


def job_config(body: dict, roots: list[Path]) -> tuple[TrainConfig, str | None]:
    """A web form's settings as a TrainConfig (through the CLI's own `make_config`), and the
    model's display name. Every path must lie under a data root (403)."""
    for key in SERVER_DECIDES:
        body.pop(key, None)
    preset = body.pop("preset", None)
    name = check_name(body.pop("name", None))  # the model's display name, not a setting
    unknown = sorted(set(body) - setting_names())
    if unknown:  # e.g. make_config's own `file` argument must never come from the web
        raise HTTPException(
            422,
            f"unknown training settings: {', '.join(unknown)}; GET /api/config/schema lists them",
        )
    cfg = make_config(preset=preset or None, **body)  # the CLI's path: ConfigError -> 422
    fields = path_fields(TrainConfig)  # every path a user gives, now and in future fields
    try:
        paths = confine_paths(cfg.model_dump(include=set(fields)), fields, roots)
        confine_dataset_images(cfg.model_copy(update=paths), roots)  # the paths inside it too
    except DataPathError as exc:
        raise HTTPException(403, str(exc)) from None
    # More image-loading processes than cores only fight over the same CPUs.
    return cfg.model_copy(update={**paths, "workers": min(cfg.workers, max_workers())}), name


def _add_job_routes(app: FastAPI, store: JobStore, runner: JobRunner, max_queued: int) -> None:
    def job_or_404(job_id: str) -> dict:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}; GET /api/jobs lists them")
        return job

    @app.get("/api/jobs")
    @TOKEN
    def list_jobs() -> list[dict]:
        return [{k: v for k, v in j.items() if k != "log"} for j in store.list()]

    @app.get("/api/jobs/{job_id}")
    @TOKEN
    def get_job(job_id: str) -> dict:
        return job_or_404(job_id)

    @app.post("/api/jobs/{job_id}/stop")
    @TOKEN
    async def stop_job(job_id: str) -> dict:
        job = job_or_404(job_id)
        if job["state"] in TERMINAL and not runner.active(job_id):
            raise HTTPException(409, f"job {job_id} is already {job['state']}")
        await run_in_threadpool(runner.stop, job_id)
        return store.get(job_id)

    @app.post("/api/jobs/{job_id}/resume")
    @TOKEN
    def resume_job(job_id: str) -> dict:
        job = job_or_404(job_id)
        if runner.active(job_id):
            raise HTTPException(409, f"job {job_id} is still training; stop it first")
        if job["state"] not in RESUMABLE:
            raise HTTPException(
                409,
                f"job {job_id} is {job['state']}; only stopped, "
                "interrupted or failed jobs can be resumed",
            )
        check_room(store, max_queued)  # a resumed job waits in the same queue
        runner.submit(job_id)  # the same run folder: training resumes from its checkpoint
        return store.get(job_id)

    @app.get("/api/jobs/{job_id}/events")
    @TOKEN
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        job_or_404(job_id)

        async def stream():
            last = None
            while not await request.is_disconnected():
                job = await run_in_threadpool(store.get, job_id)  # SQLite off the event loop
                snapshot = json.dumps(
                    {k: v for k, v in job.items() if k != "log"} | {"log": job["log"][-4000:]}
                )
                if snapshot != last:
                    last = snapshot
                    yield f"data: {snapshot}\n\n"
                if job["state"] in TERMINAL and job_id not in runner.running():
                    break
                await asyncio.sleep(0.5)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
