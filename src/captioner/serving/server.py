"""The web app and HTTP API (FastAPI). `captioner serve` runs it with Uvicorn.

Models are loaded once and kept; captioning runs in a worker thread, one batch at a time (on a
small CPU, parallel batches only fight over the same cores), so the event loop stays free for
pages, progress streams and other requests. Training runs in separate processes (jobs.py).
Access control, request caps and rate limits are applied before routing (security.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hmac
import io
import json
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..api import Tag, tags_text
from ..config import DATASET_FORMATS, TrainConfig, make_config, preset_values, presets
from ..core.csvsafe import safe_row
from ..core.errors import (
    BundleError,
    CaptionerError,
    ConfigError,
    ImageError,
    ImageTooLarge,
    ModelNotFound,
    ModelProtected,
)
from ..core.paths import default_state_dir
from ..vision.images import open_image
from .batcher import Batcher
from .datapaths import DataPathError, absolute_roots, confine_paths, path_fields
from .dataset_index import DatasetIndex
from .jobs import TERMINAL, JobRunner, JobStore, max_workers
from .model_store import ModelStore
from .names import check_name
from .security import (
    COOKIE,
    DISK_FULL_DETAIL,
    Guard,
    Policy,
    RateLimiter,
    disk_full,
    rate_limit_error,
    session_value,
)

STATIC = Path(__file__).parent / "web"

MAX_ALTERNATIVES = 5  # n best captions per photo an HTTP request may ask for

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
    max_jobs: int = 1  # training processes at once; more jobs wait queued
    # Access control (security.py). With a token, every route but captioning-when-public,
    # /healthz, /login and static files needs it.
    token: str | None = None
    public_captioning: bool = False
    host: str = "127.0.0.1"  # the address served: one of the names the server answers to
    allowed_hosts: list[str] = field(default_factory=list)  # more names (DNS rebinding check)
    max_request_mb: float = 256.0  # a whole request body (several photos)
    # Photos per minute per client address (token bucket; burst = max(this, max_files)).
    # 0 turns it off; loopback clients are exempt unless rate_limit_loopback.
    rate_limit: float = 120.0
    rate_limit_loopback: bool = False
    decode_threads: int = 2  # uploads decoded off the event loop, at most this many at once


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    models = ModelStore(
        settings.state_dir / "models", settings.state_dir / "settings.json", settings.model
    )
    batcher = Batcher()
    decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="captioner-decode")
    limiter = (
        RateLimiter(settings.rate_limit, max(settings.rate_limit, settings.max_files))
        if settings.rate_limit > 0
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        decoders.shutdown(wait=False, cancel_futures=True)
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
    app.state.policy = policy = Policy(
        token=settings.token or None,
        public_captioning=settings.public_captioning,
        bind_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        max_request_bytes=int(settings.max_request_mb * 1024 * 1024),
        limiter=limiter,
        rate_limit_loopback=settings.rate_limit_loopback,
    )
    app.add_middleware(Guard, policy=policy)

    @app.exception_handler(CaptionerError)
    async def _project_error(request: Request, exc: CaptionerError):
        if disk_full(exc):
            return JSONResponse({"detail": DISK_FULL_DETAIL}, status_code=507)
        status = next((code for kind, code in STATUS if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI turns any error while parsing a body into "400 error parsing the body";
        # a full disk while spooling an upload deserves its own answer.
        if disk_full(exc):
            return JSONResponse({"detail": DISK_FULL_DETAIL}, status_code=507)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        if disk_full(exc):
            return JSONResponse({"detail": DISK_FULL_DETAIL}, status_code=507)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); the server log has details"},
            status_code=500,
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness, plus whether the default model loads (a broken default is replaced by
        the bundled model for captioning: status "degraded")."""
        health = await run_in_threadpool(models.health)
        ok, serving = health["default_model_ok"], health["serving_model"]
        status = "ok" if ok else "degraded" if serving else "error"
        body = {
            "status": status,
            "version": __version__,
            "training": settings.allow_training,
            "token_required": bool(settings.token),
            "public_captioning": settings.public_captioning or not settings.token,
            **health,
        }
        return JSONResponse(body, status_code=503 if status == "error" else 200)

    @app.post("/api/captions")
    async def captions(
        request: Request,
        files: Annotated[list[UploadFile], File()],
        model: Annotated[str | None, Form()] = None,
        beam_size: Annotated[int | None, Form()] = None,
        length_penalty: Annotated[float | None, Form()] = None,
        alternatives: Annotated[int, Form()] = 1,
    ):
        """Caption uploaded photos. Decoding settings not given are the model's own. Each
        result has `confidence` (geometric mean of the decoder's word probabilities) and
        `tags` (the encoder's ImageNet classes); with alternatives=n > 1, also the n best
        captions of the beam."""
        if len(files) > settings.max_files:
            raise HTTPException(413, f"at most {settings.max_files} files per request")
        if not 1 <= alternatives <= MAX_ALTERNATIVES:
            raise ConfigError(
                f"alternatives: must be 1 to {MAX_ALTERNATIVES} "
                f"(how many of the best captions to return), got {alternatives}"
            )
        client = request.client.host if request.client else ""
        limited = policy.rate_limited(client)
        if limited is not None and (wait := limited.take(client, len(files))):
            raise rate_limit_error(wait)
        model_id, cap = await run_in_threadpool(models.resolve, model)
        loop = asyncio.get_running_loop()
        decode = cap.decoding.resolve(beam_size=beam_size, length_penalty=length_penalty)
        limit = int(settings.max_upload_mb * 1024 * 1024)
        results: list[dict] = []
        images: list[tuple[int, object]] = []
        for f in files:
            name = Path(f.filename or "image").name
            data = await f.read(limit + 1)
            results.append({"image": name, "caption": None, "confidence": None, "tags": []})
            if len(data) > limit:
                results[-1]["error"] = (
                    f"file is larger than {settings.max_upload_mb:g} MB; "
                    "resize it or raise --max-upload-mb"
                )
                continue
            try:  # decoding is CPU work: off the event loop, in a small bounded pool
                image = await loop.run_in_executor(
                    decoders, open_image, io.BytesIO(data), cap.encoder.spec.image_size
                )
                images.append((len(results) - 1, image))
            except ImageError as exc:  # say why: too large, truncated, not an image...
                reason = str(exc).split(": ", 1)[-1]
                hint = "" if isinstance(exc, ImageTooLarge) else "; send a JPEG, PNG or WebP photo"
                results[-1]["error"] = reason + hint
        if images:
            found = await batcher.describe(
                cap, [im for _, im in images], decode, alternatives=alternatives
            )
            for (i, _), d in zip(images, found, strict=True):
                results[i].update(
                    caption=d.caption,
                    confidence=round(d.confidence, 4),
                    tags=[
                        {"label": t.label, "probability": round(t.probability, 4)} for t in d.tags
                    ],
                )
                if alternatives > 1:
                    results[i]["alternatives"] = [
                        {"caption": a.caption, "confidence": round(a.confidence, 4)}
                        for a in d.alternatives
                    ]
        for r in results:
            if r["caption"] is not None:
                r.pop("error", None)
        used = {"X-Captioner-Model": model_id}  # the bundled one if the default is broken
        if "text/csv" in request.headers.get("accept", ""):
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["image", "caption", "confidence", "tags"])
            w.writerows(
                safe_row(
                    [
                        r["image"],
                        r["caption"],
                        f"{r['confidence']:.3f}",
                        tags_text([Tag(**t) for t in r["tags"]]),
                    ]
                )
                for r in results
                if r["caption"] is not None
            )
            return Response(
                buf.getvalue(),
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="captions.csv"', **used},
            )
        return JSONResponse(results, headers=used)

    @app.get("/api/models")
    def list_models() -> list[dict]:
        return [models.info(m) for m in models.ids()]  # a broken one is listed as broken

    @app.get("/api/models/{model_id}")
    def get_model(model_id: str) -> dict:
        return models.info(model_id)

    if settings.allow_training:  # caption-only servers change nothing

        @app.post("/api/models/{model_id}/default")
        def make_default(model_id: str) -> dict:
            models.set_default(model_id)  # loads it first: a broken bundle never becomes default
            return models.info(model_id)

        @app.patch("/api/models/{model_id}")
        async def rename_model(model_id: str, request: Request) -> dict:
            """Rename a model: {"name": "..."} (null or "" removes the name). The id stays."""
            body = await _json_object(request, 'send {"name": "..."}')
            if set(body) != {"name"}:
                raise HTTPException(422, 'send {"name": "..."}: the name is all that can change')
            name = check_name(body["name"])  # ConfigError -> 422
            await run_in_threadpool(models.rename, model_id, name)
            return await run_in_threadpool(models.info, model_id)

        @app.delete("/api/models/{model_id}")
        def delete_model(model_id: str) -> dict:
            models.delete(model_id)
            return {"deleted": model_id}

    @app.get("/api/models/{model_id}/download")
    def download_model(model_id: str) -> StreamingResponse:
        # Zipped into a temp file that spills to disk past 8 MB, then streamed: a fine-tuned
        # encoder's bundle is ~100 MB, which must not sit in memory per request.
        spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 (closed by chunks())
        with zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as z:
            for f in models.files(model_id):
                z.write(f, f"{model_id}/{f.name}")
        spool.seek(0)

        def chunks():
            with spool:
                while block := spool.read(1024 * 1024):
                    yield block

        return StreamingResponse(
            chunks(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="captioner-{model_id}.zip"'},
        )

    _add_login_routes(app, settings)
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


def _add_login_routes(app: FastAPI, settings: ServerSettings) -> None:
    """The pages' way to present the token: a form that sets an HttpOnly, SameSite=Strict
    cookie (the API also takes `Authorization: Bearer TOKEN`)."""

    def safe_next(value: str) -> str:  # only this server's own pages, never another site
        return value if value.startswith("/") and not value.startswith(("//", "/\\")) else "/"

    @app.get("/login", include_in_schema=False)
    def login_page() -> Response:
        if not settings.token:
            return RedirectResponse("/", status_code=303)
        return FileResponse(STATIC / "login.html", media_type="text/html")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        target = safe_next(str(form.get("next") or "/"))
        if not settings.token:
            return RedirectResponse(target, status_code=303)
        given = str(form.get("token") or "").strip()
        client = request.client.host if request.client else ""
        limited = app.state.policy.rate_limited(client)
        if limited is not None and (wait := limited.take("login:" + client, 10)):
            raise rate_limit_error(wait)  # slows down guessing: 12 tries a minute
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            return RedirectResponse(f"/login?failed=1&next={quote(target)}", status_code=303)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            session_value(settings.token),
            max_age=7 * 24 * 3600,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login" if settings.token else "/", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response


async def _json_object(request: Request, what: str) -> dict:
    try:
        body = await request.json()
        if isinstance(body, dict):
            return body
    except ValueError:
        pass
    raise HTTPException(400, what)


def _page(name: str):
    def serve() -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html")

    return serve


def _add_training_routes(app: FastAPI, settings: ServerSettings, models: ModelStore) -> None:
    store = JobStore(settings.state_dir / "jobs.sqlite")
    # Adopts the live workers of an earlier server, marks lost ones interrupted (jobs.py).
    runner = JobRunner(store, settings.state_dir / "runs", models.dir, max_jobs=settings.max_jobs)
    app.state.runner = runner
    roots = absolute_roots(settings.data_roots)  # symlinks kept: see datapaths.py

    def job_or_404(job_id: str) -> dict:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}; GET /api/jobs lists them")
        return job

    datasets = DatasetIndex(roots)

    @app.get("/api/datasets")
    def list_datasets(refresh: bool = False) -> dict:
        """The data roots and the datasets found in them (format, images, captions, splits);
        scanned in a request thread with bounded depth, cached for 30 s (`?refresh=true`)."""
        return {
            "roots": [str(r) for r in roots],
            "formats": list(DATASET_FORMATS),
            "datasets": datasets.list(refresh),
        }

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
        for key in ("cache_dir", "device"):  # the server decides these
            body.pop(key, None)
        preset = body.pop("preset", None)
        name = check_name(body.pop("name", None))  # the model's display name, not a setting
        unknown = sorted(set(body) - set(TrainConfig.model_fields))
        if unknown:  # e.g. make_config's own `file` argument must never come from the web
            raise HTTPException(
                422,
                f"unknown training settings: {', '.join(unknown)}; "
                "GET /api/config/schema lists them",
            )
        cfg = make_config(preset=preset or None, **body)  # the CLI's path: ConfigError -> 422
        fields = path_fields(TrainConfig)  # every path a user gives, now and in future fields
        try:
            paths = confine_paths(cfg.model_dump(include=set(fields)), fields, roots)
        except DataPathError as exc:
            raise HTTPException(403, str(exc)) from None
        # More image-loading processes than cores only fight over the same CPUs.
        cfg = cfg.model_copy(update={**paths, "workers": min(cfg.workers, max_workers())})
        job_id = store.create(cfg, name)
        runner.submit(job_id)  # starts now, or waits queued for a free slot
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
        if job["state"] in TERMINAL and not runner.active(job_id):
            raise HTTPException(409, f"job {job_id} is already {job['state']}")
        await run_in_threadpool(runner.stop, job_id)
        return store.get(job_id)

    @app.post("/api/jobs/{job_id}/resume")
    def resume_job(job_id: str) -> dict:
        job = job_or_404(job_id)
        if runner.active(job_id):
            raise HTTPException(409, f"job {job_id} is still training; stop it first")
        if job["state"] not in ("stopped", "interrupted", "failed"):
            raise HTTPException(
                409,
                f"job {job_id} is {job['state']}; only stopped, "
                "interrupted or failed jobs can be resumed",
            )
        runner.submit(job_id)  # the same run folder: training resumes from its checkpoint
        return store.get(job_id)

    @app.get("/api/jobs/{job_id}/events")
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
