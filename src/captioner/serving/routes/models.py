"""The models: list, inspect and download them; on servers that allow training, also make one
the default, rename or delete it."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
import zipfile

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..guard import TOKEN, Access
from ..names import check_name
from .common import Services, json_object


def add_model_routes(app: FastAPI, services: Services) -> None:
    models, policy = services.models, services.policy

    @app.get("/api/models")
    @Access(public=True)
    def list_models(request: Request) -> list[dict]:
        # A broken one is listed as broken; its error names server paths only for the token.
        paths = policy.shows_paths(request.headers)
        return [models.info(m, paths) for m in models.ids()]

    @app.get("/api/models/{model_id}")
    @TOKEN
    def get_model(model_id: str, request: Request) -> dict:
        return models.info(model_id, policy.shows_paths(request.headers))

    if services.settings.allow_training:  # caption-only servers change nothing
        _add_model_changes(app, services)

    @app.get("/api/models/{model_id}/download")
    @TOKEN
    def download_model(model_id: str) -> StreamingResponse:
        # Zipped into a temp file that spills to disk past 8 MB, then streamed: a fine-tuned
        # encoder's bundle is ~100 MB, which must not sit in memory per request.
        spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 (closed by chunks())
        with zipfile.ZipFile(spool, "w", zipfile.ZIP_DEFLATED) as z:
            for f in models.files(model_id):  # the folder's own files, never a link
                _add_file(z, f, f"{model_id}/{f.name}")
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


def _add_file(z: zipfile.ZipFile, path: os.PathLike, name: str) -> None:
    """`path` into the zip, opened without following a link: one placed between the listing
    and this read is refused by the system (ELOOP), not followed to /etc/shadow."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link now: left out, as listed links are
            return
        raise
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        when = time.localtime(max(st.st_mtime, 315_619_200))[:6]  # zip dates start in 1980
        info = zipfile.ZipInfo(name, when)
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=st.st_size >= 2**31) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)


def _add_model_changes(app: FastAPI, services: Services) -> None:
    models = services.models

    @app.post("/api/models/{model_id}/default")
    @TOKEN
    def make_default(model_id: str) -> dict:
        models.set_default(model_id)  # loads it first: a broken bundle never becomes default
        return models.info(model_id)

    @app.patch("/api/models/{model_id}")
    @TOKEN
    async def rename_model(model_id: str, request: Request) -> dict:
        """Rename a model: {"name": "..."} (null or "" removes the name). The id stays."""
        body = await json_object(request, 'send {"name": "..."}')
        if set(body) != {"name"}:
            raise HTTPException(422, 'send {"name": "..."}: the name is all that can change')
        name = check_name(body["name"])  # ConfigError -> 422
        await run_in_threadpool(models.rename, model_id, name)
        return await run_in_threadpool(models.info, model_id)

    @app.delete("/api/models/{model_id}")
    @TOKEN
    def delete_model(model_id: str) -> dict:
        models.delete(model_id)
        return {"deleted": model_id}
