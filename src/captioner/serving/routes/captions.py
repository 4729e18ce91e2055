"""Captioning: POST /api/captions (uploads in, JSON or CSV out) and GET /healthz (can this
server caption: does its default model load)."""

from __future__ import annotations

import asyncio
import functools
import io
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import Field, create_model
from starlette.concurrency import run_in_threadpool

from ... import __version__
from ...api import csv_header, format_row
from ...config import DecodeConfig
from ...core.errors import DecodeBusy, ImageError, ImageFormatRefused, ImageTooLarge
from ...decoders.settings import MAX_ALTERNATIVES, check_alternatives
from ...vision.images import encoder_image
from ...vision.limits import accepted_text
from ..guard import OPEN, Access, Body
from ..security import client_host
from .common import Services

# The form's options: the model, how many captions, and every DecodeConfig field (optional:
# the model's own when absent), so HTTP takes the same overrides as Python and the CLI, and
# DecodeConfig.resolve checks them with the same limits.
CaptionOptions = create_model(
    "CaptionOptions",
    model=(str | None, Field(None, description="model id (default: the server's default)")),
    alternatives=(
        int,
        Field(1, description=f"how many of the best captions to return, 1 to {MAX_ALTERNATIVES}"),
    ),
    **{
        name: (field.annotation | None, Field(None, description=field.description))
        for name, field in DecodeConfig.model_fields.items()
    },
)

# How long one photo may wait for room in the decoding memory budget before the request is
# answered 503 (a decode takes at most ~1-2 s, so this is a queue dozens of photos deep).
DECODE_WAIT_S = 30.0


def add_caption_routes(app: FastAPI, services: Services) -> None:
    _add_health_route(app, services)
    settings, models, policy = services.settings, services.models, services.policy

    @app.post("/api/captions")
    @Access(public=True, body=Body.MULTIPART, captioning=True)
    async def captions(
        request: Request,
        files: Annotated[list[UploadFile], File()],
        options: Annotated[CaptionOptions, Form()],
    ):
        """Caption uploaded photos. Decoding settings not given are the model's own. Each
        result has `confidence` (geometric mean of the decoder's word probabilities) and
        `tags` (the encoder's ImageNet classes); with alternatives=n > 1, also the n best
        captions of the beam."""
        if len(files) > settings.max_files:
            raise HTTPException(413, f"at most {settings.max_files} files per request")
        alternatives = check_alternatives(options.alternatives)
        if refusal := policy.over_limit(client_host(request.scope), len(files)):
            raise refusal.error()
        model_id, cap = await run_in_threadpool(models.resolve, options.model)
        decode = cap.decoding_for(**options.model_dump(include=set(DecodeConfig.model_fields)))
        results, images = await _read_photos(files, services, cap.encoder.spec.image_size)
        described = {}
        if images:
            found = await services.batcher.describe(
                cap, [im for _, im in images], decode, alternatives=alternatives
            )
            described = {i: d for (i, _), d in zip(images, found, strict=True)}
            for i, d in described.items():
                results[i] = {"image": results[i]["image"], **d.to_dict()}
        used = {"X-Captioner-Model": model_id}  # the bundled one if the default is broken
        if "text/csv" in request.headers.get("accept", ""):
            rows = [format_row("csv", results[i]["image"], d) for i, d in described.items()]
            return Response(
                csv_header() + "".join(rows),
                media_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="captions.csv"', **used},
            )
        return JSONResponse(results, headers=used)


def _add_health_route(app: FastAPI, services: Services) -> None:
    settings, models = services.settings, services.models

    @app.get("/healthz")
    @OPEN
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


async def _read_photos(
    files: list[UploadFile], services: Services, size: int
) -> tuple[list[dict], list[tuple[int, object]]]:
    """One result row per upload (with the reason when it cannot be read), and the photos with
    the index of their row. One file at a time, each decoded off the event loop (header
    included) and cut at once to the encoder's `size` x `size`: a request holds 150 KB per
    photo, never the decoded file. 503 when the decoding memory budget stays full."""
    settings = services.settings
    loop = asyncio.get_running_loop()
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
        decode = functools.partial(encoder_image, io.BytesIO(data), size, wait=DECODE_WAIT_S)
        try:  # CPU work, header parsing included: in a small bounded pool, never on the loop
            images.append((len(results) - 1, await loop.run_in_executor(services.decoders, decode)))
        except DecodeBusy as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "10"}) from None
        except ImageError as exc:  # say why: too large, not a photo format, truncated...
            reason = str(exc).split(": ", 1)[-1]
            accepted = accepted_text()
            known = isinstance(exc, (ImageTooLarge, ImageFormatRefused)) or accepted in reason
            hint = "" if known else f"; send a photo as {accepted}"  # unless it says so already
            results[-1]["error"] = reason + hint
        del data  # the upload's bytes go before the next file's are read
    return results, images
