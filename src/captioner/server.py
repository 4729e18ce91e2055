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
import shutil
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from . import __version__
from .api import Captioner, default_model_path
from .bundle import BundleError, load_bundle, write_json
from .config import TrainConfig
from .encoders import open_image
from .jobs import TERMINAL, JobRunner, JobStore

STATIC = Path(__file__).parent / "web"
BUNDLED_ID = "bundled"


@dataclass
class ServerSettings:
    state_dir: Path = Path.home() / ".local" / "share" / "captioner"
    model: Path | None = None  # start with this model as the default
    allow_training: bool = True
    data_roots: list[Path] = field(default_factory=list)  # training data must live under one
    max_upload_mb: float = 20.0
    max_files: int = 100


class Models:
    """Bundled model + every bundle in state_dir/models; loaded lazily, then kept."""

    def __init__(self, settings: ServerSettings) -> None:
        self.dir = settings.state_dir / "models"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefs = settings.state_dir / "settings.json"
        self.loaded: dict[str, Captioner] = {}
        self.lock = threading.Lock()
        self.extra: dict[str, Path] = {}
        if settings.model is not None:
            self.extra["custom"] = Path(settings.model)
            self.set_default("custom")

    def path(self, model_id: str) -> Path:
        if model_id == BUNDLED_ID:
            return default_model_path()
        if model_id in self.extra:
            return self.extra[model_id]
        p = self.dir / model_id
        if "/" in model_id or model_id.startswith(".") or not (p / "config.json").is_file():
            raise HTTPException(404, f"no model {model_id!r}; GET /api/models lists them")
        return p

    def ids(self) -> list[str]:
        found = sorted(p.name for p in self.dir.iterdir()
                       if p.is_dir() and not p.name.startswith(".") and
                       (p / "config.json").is_file())
        return [BUNDLED_ID, *self.extra, *found]

    def default(self) -> str:
        try:
            chosen = json.loads(self.prefs.read_text()).get("default_model", BUNDLED_ID)
        except (OSError, ValueError):
            chosen = BUNDLED_ID
        return chosen if chosen in self.ids() else BUNDLED_ID

    def set_default(self, model_id: str) -> None:
        self.path(model_id)
        tmp = self.prefs.with_suffix(".tmp")
        write_json(tmp, {"default_model": model_id})
        tmp.replace(self.prefs)

    def get(self, model_id: str | None) -> Captioner:
        model_id = model_id or self.default()
        path = self.path(model_id)
        with self.lock:
            if model_id not in self.loaded:
                try:
                    self.loaded[model_id] = Captioner.load(path)
                except BundleError as exc:
                    raise HTTPException(500, f"model {model_id} cannot be loaded: {exc}") from None
            return self.loaded[model_id]

    def info(self, model_id: str) -> dict:
        path = self.path(model_id)
        cfg = json.loads((path / "config.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text()) if (
            path / "metrics.json").exists() else {}
        card = (path / "README.md").read_text() if (path / "README.md").exists() else ""
        train = cfg.get("train", {})
        return {
            "id": model_id, "default": model_id == self.default(),
            "deletable": model_id not in (BUNDLED_ID, *self.extra),
            "encoder": cfg.get("encoder"), "model": cfg.get("model"),
            "data": {k: train.get(k) for k in ("dataset_format", "dataset_path", "train_split")},
            "settings": {k: train.get(k) for k in ("batch_size", "vocab_threshold", "embed_size",
                                                     "hidden_size", "learning_rate", "epochs")},
            "dev_scores": metrics.get("dev", {}), "best_epoch": metrics.get("best_epoch"),
            "train_seconds": metrics.get("train_seconds"),
            "size_bytes": sum(f.stat().st_size for f in path.iterdir() if f.is_file()),
            "card": card,
        }

    def delete(self, model_id: str) -> None:
        if model_id in (BUNDLED_ID, *self.extra):
            raise HTTPException(403, "the bundled model cannot be deleted")
        path = self.path(model_id)
        with self.lock:
            self.loaded.pop(model_id, None)
        shutil.rmtree(path)


class Batcher:
    """Captions requests on one worker thread, merging concurrent requests into one batch.

    One thread keeps memory flat (no per-thread malloc arenas) and the two cores busy with one
    batch at a time; merging waiting requests amortises the encoder and beam search over many
    images, which is what keeps latency low when many clients send one photo each.
    """

    def __init__(self, max_batch: int = 32) -> None:
        self.max_batch = max_batch
        self.queue: list[tuple[Captioner, list[Image.Image], int, asyncio.Future]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._loop, name="captioner-batcher", daemon=True).start()

    async def caption(self, cap: Captioner, images: list[Image.Image], beam: int) -> list[str]:
        future = asyncio.get_running_loop().create_future()
        with self.cond:
            self.queue.append((cap, images, beam, future))
            self.cond.notify()
        return await future

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                first = self.queue[0]
                batch, size = [], 0
                for item in list(self.queue):  # same model and beam, up to max_batch images
                    if item[0] is first[0] and item[2] == first[2] and (
                            not batch or size + len(item[1]) <= self.max_batch):
                        batch.append(item)
                        size += len(item[1])
                        self.queue.remove(item)
            try:
                texts = first[0].caption([im for item in batch for im in item[1]],
                                         beam_size=first[2])
                error = None
            except Exception as exc:  # hand the error to every waiting request
                texts, error = [], exc
            start = 0
            for _, images, _, future in batch:
                part = texts[start:start + len(images)]
                start += len(images)
                loop = future.get_loop()
                if error is not None:
                    loop.call_soon_threadsafe(_set_exception, future, error)
                else:
                    loop.call_soon_threadsafe(_set_result, future, part)


def _set_result(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    models = Models(settings)
    batcher = Batcher()
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        runner = getattr(app.state, "runner", None)
        if runner is not None:  # a stopped server stops its jobs; they can be resumed later
            await run_in_threadpool(runner.shutdown)

    app = FastAPI(title="captioner", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Caption photos, and train and manage caption models.")
    _add_offline_docs(app)
    app.state.models = models

    @app.exception_handler(BundleError)
    async def _bundle_error(request: Request, exc: BundleError):
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "version": __version__, "training": settings.allow_training,
                "default_model": models.default()}

    @app.post("/api/captions")
    async def captions(request: Request, files: Annotated[list[UploadFile], File()],
                       model: Annotated[str | None, Form()] = None,
                       beam_size: Annotated[int, Form()] = 3):
        if not 1 <= beam_size <= 10:
            raise HTTPException(422, "beam_size must be between 1 and 10")
        if len(files) > settings.max_files:
            raise HTTPException(413, f"at most {settings.max_files} files per request")
        cap = await run_in_threadpool(models.get, model)
        limit = int(settings.max_upload_mb * 1024 * 1024)
        results: list[dict] = []
        images: list[tuple[int, Image.Image]] = []
        for f in files:
            name = Path(f.filename or "image").name
            data = await f.read(limit + 1)
            results.append({"image": name, "caption": None})
            if len(data) > limit:
                results[-1]["error"] = (f"file is larger than {settings.max_upload_mb:g} MB; "
                                        "resize it or raise --max-upload-mb")
                continue
            try:
                image = open_image(io.BytesIO(data), cap.encoder.spec.image_size)
                images.append((len(results) - 1, image))
            except (OSError, ValueError, Image.DecompressionBombError):
                results[-1]["error"] = "not an image this server can read (use JPEG, PNG or WebP)"
        if images:
            texts = await batcher.caption(cap, [im for _, im in images], beam_size)
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
            return Response(buf.getvalue(), media_type="text/csv", headers={
                "Content-Disposition": 'attachment; filename="captions.csv"'})
        return results

    @app.get("/api/models")
    def list_models() -> list[dict]:
        return [models.info(m) for m in models.ids()]

    @app.get("/api/models/{model_id}")
    def get_model(model_id: str) -> dict:
        return models.info(model_id)

    @app.post("/api/models/{model_id}/default")
    def make_default(model_id: str) -> dict:
        load_bundle(models.path(model_id))  # refuse a broken bundle before it becomes default
        models.set_default(model_id)
        return models.info(model_id)

    @app.delete("/api/models/{model_id}")
    def delete_model(model_id: str) -> dict:
        models.delete(model_id)
        return {"deleted": model_id}

    @app.get("/api/models/{model_id}/download")
    def download_model(model_id: str) -> Response:
        path = models.path(model_id)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(path.iterdir()):
                if f.is_file():
                    z.write(f, f"{model_id}/{f.name}")
        return Response(buf.getvalue(), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="captioner-{model_id}.zip"'})

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

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
              name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="captioner API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon-32x32.png")


def _page(name: str):
    def serve() -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html")
    return serve


def _add_training_routes(app: FastAPI, settings: ServerSettings, models: Models) -> None:
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
        return {"roots": [str(r) for r in roots]}

    @app.post("/api/jobs", status_code=201)
    async def create_job(request: Request) -> dict:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            raise HTTPException(400, "send the training settings as a JSON object") from None
        body.pop("cache_dir", None)  # the server decides where caches live
        try:
            cfg = TrainConfig(**body)
        except ValidationError as exc:
            msgs = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            raise HTTPException(422, "; ".join(msgs)) from None
        path = cfg.dataset_path.expanduser().resolve()
        if not roots:
            raise HTTPException(403, "this server allows no training data; start it with "
                                     "--data-root DIR")
        if not any(path == r or r in path.parents for r in roots):
            raise HTTPException(403, f"{cfg.dataset_path} is outside the allowed data folders: "
                                     + ", ".join(map(str, roots)))
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
            raise HTTPException(409, f"job {job_id} is {job['state']}; only stopped, "
                                     "interrupted or failed jobs can be resumed")
        runner.start(job_id)
        return store.get(job_id)

    @app.get("/api/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        job_or_404(job_id)

        async def stream():
            last = None
            while not await request.is_disconnected():
                job = store.get(job_id)
                snapshot = json.dumps({k: v for k, v in job.items() if k != "log"} |
                                      {"log": job["log"][-4000:]})
                if snapshot != last:
                    last = snapshot
                    yield f"data: {snapshot}\n\n"
                if job["state"] in TERMINAL and job_id not in runner.running():
                    break
                await asyncio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
