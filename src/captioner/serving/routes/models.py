"""The models: list, inspect and download them; on servers that allow training, also make one
the default, rename or delete it."""

from __future__ import annotations

import tempfile
import zipfile

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..guard import TOKEN, Access
from ..names import check_name
from .common import Services, json_object


def add_model_routes(app: FastAPI, services: Services) -> None:
    models = services.models

    @app.get("/api/models")
    @Access(public=True)
    def list_models() -> list[dict]:
        return [models.info(m) for m in models.ids()]  # a broken one is listed as broken

    @app.get("/api/models/{model_id}")
    @TOKEN
    def get_model(model_id: str) -> dict:
        return models.info(model_id)

    if services.settings.allow_training:  # caption-only servers change nothing
        _add_model_changes(app, services)

    @app.get("/api/models/{model_id}/download")
    @TOKEN
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
