"""The web app and HTTP API (FastAPI). `captioner serve` runs it with Uvicorn.

Models are loaded once and kept; captioning runs in a worker thread, one batch at a time (on a
small CPU, parallel batches only fight over the same cores), so the event loop stays free for
pages, progress streams and other requests. Training runs in separate processes (jobs/).
Access control, request caps and rate limits are applied before routing (guard.py), by the
rules each route declares beside it (routes/).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..core.errors import BundleError, CaptionerError, ConfigError, ModelNotFound, ModelProtected
from .batcher import Batcher
from .guard import Guard
from .model_store import ModelStore
from .routes import (
    Services,
    add_caption_routes,
    add_dataset_routes,
    add_docs,
    add_login_routes,
    add_model_routes,
    add_pages,
    add_training_routes,
)
from .security import DISK_FULL_DETAIL, Policy, RateLimiter, disk_full
from .settings import ServerSettings

# Project errors -> HTTP status; anything else that is a CaptionerError is a 400.
STATUS = [(ModelNotFound, 404), (ModelProtected, 403), (ConfigError, 422), (BundleError, 500)]


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    services = Services(
        settings=settings,
        models=ModelStore(
            settings.state_dir / "models",
            settings.state_dir / "settings.json",
            settings.model,
            max_loaded=settings.max_loaded_models,
        ),
        policy=_policy(settings),
        batcher=Batcher(),
        decoders=ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="captioner-decode"),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        services.decoders.shutdown(wait=False, cancel_futures=True)
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
    app.state.models = services.models
    app.state.policy = services.policy
    app.add_middleware(
        Guard,
        policy=services.policy,
        router=app.router,
        body_timeout=settings.body_timeout,
        max_uploads=settings.max_uploads,
    )
    _add_error_handlers(app)
    # Registration order is the order of /openapi.json and /docs.
    add_docs(app)
    add_caption_routes(app, services)
    add_model_routes(app, services)
    add_login_routes(app, services)
    if settings.allow_training:  # caption-only servers register no model-changing route
        add_dataset_routes(app, services)
        add_training_routes(app, services)
    add_pages(app, settings.allow_training)
    return app


def _policy(settings: ServerSettings) -> Policy:
    # Typed tokens are stripped before they are compared: the server's own must be too, and a
    # blank one could never match.
    token = settings.token.strip() if settings.token else None
    if settings.token and not token:
        raise ConfigError("the access token is blank; give 16 or more random characters")
    limiter = (
        RateLimiter(settings.rate_limit, max(settings.rate_limit, settings.max_files))
        if settings.rate_limit > 0
        else None
    )
    return Policy(
        token=token,
        public_captioning=settings.public_captioning,
        bind_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        max_request_bytes=int(settings.max_request_mb * 1024 * 1024),
        limiter=limiter,
        trusted_proxies=settings.trusted_proxies,
    )


def _add_error_handlers(app: FastAPI) -> None:
    """Project errors map to HTTP statuses here, once; a full disk is a 507 wherever it hits."""

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
