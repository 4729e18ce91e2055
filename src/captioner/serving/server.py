"""The web app and HTTP API (FastAPI). `captioner serve` runs it with Uvicorn.

Models are loaded once and kept; captioning runs in a worker thread, one batch at a time (on a
small CPU, parallel batches only fight over the same cores), so the event loop stays free for
pages, progress streams and other requests. Training runs in separate processes (jobs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..config import DATASET_FORMATS, TrainConfig, make_config, preset_values, presets
from ..core.errors import (
    BundleError,
    CaptionerError,
    ConfigError,
    ImageError,
    ModelNotFound,
    ModelProtected,
)
from ..core.paths import default_state_dir
from ..vision.images import open_image
from .batcher import Batcher
from .jobs import TERMINAL, JobRunner, JobStore
from .model_store import ModelStore

STATIC = Path(__file__).parent / "web"

# Project errors -> HTTP status; anything else that is a CaptionerError is a 400.
STATUS = [(ModelNotFound, 404), (ModelProtected, 403), (ConfigError, 422), (BundleError, 500)]


@dataclass
class ServerSettings:
    state_dir: Path = field(default_factory=default_state_dir)
    model: Path | None = None  # this server run's default model (the saved default is kept)
    allow_training: bool = True
    data_roots: list[Path] = field(default_factory=list)  # training data must live under one
    max_upload_mb: float = 20.0
    max_files: int = 100


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    models = ModelStore(
        settings.state_dir / "models", settings.state_dir / "settings.json", settings.model
    )
    batcher = Batcher()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        runner = getattr(app.state, "runner", None)
        if runner is not None:  # a stopped server stops its jobs; they can be resumed later
            await run_in_threadpool(runner.shutdown)

    app = FastAPI(
        title="captioner",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Caption photos, and train and manage caption models.",
    )
    _add_offline_docs(app)
    app.state.models = models

    @app.exception_handler(CaptionerError)
    async def _project_error(request: Request, exc: CaptionerError):
        status = next((code for kind, code in STATUS if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/healthz")
    def healthz() -> dict:
        return {
            "status": "ok",
            "version": __version__,
            "training": settings.allow_training,
            "default_model": models.default(),
        }

    @app.post("/api/captions")
    async def captions(
        request: Request,
        files: Annotated[list[UploadFile], File()],
        model: Annotated[str | None, Form()] = None,
        beam_size: Annotated[int | None, Form()] = None,
        length_penalty: Annotated[float | None, Form()] = None,
    ):
        """Caption uploaded photos. Decoding settings not given are the model's own."""
        if len(files) > settings.max_files:
            raise HTTPException(413, f"at most {settings.max_files} files per request")
        cap = await run_in_threadpool(models.get, model)
        decode = cap.decoding.resolve(beam_size=beam_size, length_penalty=length_penalty)
        limit = int(settings.max_upload_mb * 1024 * 1024)
        results: list[dict] = []
        images: list[tuple[int, object]] = []
        for f in files:
            name = Path(f.filename or "image").name
            data = await f.read(limit + 1)
            results.append({"image": name, "caption": None})
            if len(data) > limit:
                results[-1]["error"] = (
                    f"file is larger than {settings.max_upload_mb:g} MB; "
                    "resize it or raise --max-upload-mb"
                )
                continue
            try:  # decoding is CPU work: off the event loop
                image = await run_in_threadpool(
                    open_image, io.BytesIO(data), cap.encoder.spec.image_size
                )
                images.append((len(results) - 1, image))
            except ImageError:
                results[-1]["error"] = "not an image this server can read (use JPEG, PNG or WebP)"
        if images:
            texts = await batcher.caption(cap, [im for _, im in images], decode)
            for (i, _), text in zip(images, texts, strict=True):
                results[i]["caption"] = text
        for r in results:
            if r["caption"] is not None:
                r.pop("error", None)
        if "text/csv" in request.headers.get("accept", ""):
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["image", "caption"])
            w.writerows([r["image"], r["caption"]] for r in results if r["caption"] is not None)
            return Response(
                buf.getvalue(),
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="captions.csv"'},
            )
        return results

    @app.get("/api/models")
    def list_models() -> list[dict]:
        return [models.info(m) for m in models.ids()]

    @app.get("/api/models/{model_id}")
    def get_model(model_id: str) -> dict:
        return models.info(model_id)

    @app.post("/api/models/{model_id}/default")
    def make_default(model_id: str) -> dict:
        models.set_default(model_id)  # loads it first: a broken bundle never becomes default
        return models.info(model_id)

    @app.delete("/api/models/{model_id}")
    def delete_model(model_id: str) -> dict:
        models.delete(model_id)
        return {"deleted": model_id}

    @app.get("/api/models/{model_id}/download")
    def download_model(model_id: str) -> Response:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in models.files(model_id):
                z.write(f, f"{model_id}/{f.name}")
        return Response(
            buf.getvalue(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="captioner-{model_id}.zip"'},
        )

    if settings.allow_training:
        _add_training_routes(app, settings, models)

    for page in ("train", "models"):
        if page == "train" and not settings.allow_training:
            continue
        app.add_api_route(f"/{page}", _page(f"{page}.html"), include_in_schema=False)
    app.add_api_route("/", _page("index.html"), include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _add_offline_docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle package: FastAPI's default /docs loads it from a
    CDN, and the app must work with no internet."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount(
        "/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger"
    )

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="captioner API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def _page(name: str):
    def serve() -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html")

    return serve


def _add_training_routes(app: FastAPI, settings: ServerSettings, models: ModelStore) -> None:
    store = JobStore(settings.state_dir / "jobs.sqlite")
    store.mark_orphans()
    runner = JobRunner(store, settings.state_dir / "runs", models.dir)
    app.state.runner = runner
    roots = [Path(r).resolve() for r in settings.data_roots]

    def job_or_404(job_id: str) -> dict:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}; GET /api/jobs lists them")
        return job

    @app.get("/api/datasets")
    def data_roots() -> dict:
        return {"roots": [str(r) for r in roots], "formats": list(DATASET_FORMATS)}

    @app.get("/api/config/schema")
    def config_schema() -> dict:
        """TrainConfig's JSON schema (defaults, limits, choices, help) and the presets: the
        Train page builds its form from this."""
        schema = TrainConfig.model_json_schema()
        for name in ("cache_dir", "device"):  # the server decides these
            schema["properties"].pop(name, None)
        return {"schema": schema, "presets": {p: preset_values(p) for p in presets()}}

    @app.post("/api/jobs", status_code=201)
    async def create_job(request: Request) -> dict:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            raise HTTPException(400, "send the training settings as a JSON object") from None
        body.pop("cache_dir", None)  # the server decides where caches live
        preset = body.pop("preset", None)
        cfg = make_config(preset=preset or None, **body)  # the CLI's path: ConfigError -> 422
        path = cfg.dataset_path.expanduser().resolve()
        if not roots:
            raise HTTPException(
                403, "this server allows no training data; start it with --data-root DIR"
            )
        if not any(path == r or r in path.parents for r in roots):
            raise HTTPException(
                403,
                f"{cfg.dataset_path} is outside the allowed data folders: "
                + ", ".join(map(str, roots)),
            )
        if not path.exists():
            raise HTTPException(422, f"{cfg.dataset_path} does not exist")
        cfg = cfg.model_copy(update={"dataset_path": path})
        job_id = store.create(cfg)
        runner.start(job_id)
        return store.get(job_id)

    @app.get("/api/jobs")
    def list_jobs() -> list[dict]:
        return [{k: v for k, v in j.items() if k != "log"} for j in store.list()]

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> dict:
        return job_or_404(job_id)

    @app.post("/api/jobs/{job_id}/stop")
    async def stop_job(job_id: str) -> dict:
        job = job_or_404(job_id)
        if job["state"] in TERMINAL:
            raise HTTPException(409, f"job {job_id} is already {job['state']}")
        await run_in_threadpool(runner.stop, job_id)
        return store.get(job_id)

    @app.post("/api/jobs/{job_id}/resume")
    def resume_job(job_id: str) -> dict:
        job = job_or_404(job_id)
        if job["state"] not in ("stopped", "interrupted", "failed"):
            raise HTTPException(
                409,
                f"job {job_id} is {job['state']}; only stopped, "
                "interrupted or failed jobs can be resumed",
            )
        runner.start(job_id)
        return store.get(job_id)

    @app.get("/api/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        job_or_404(job_id)

        async def stream():
            last = None
            while not await request.is_disconnected():
                job = store.get(job_id)
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
