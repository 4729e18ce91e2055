"""What every group of routes is handed, and the small helpers they share."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from ..batcher import Batcher
from ..model_store import ModelStore
from ..security import Policy

if TYPE_CHECKING:
    from ..settings import ServerSettings

STATIC = Path(__file__).parents[1] / "web"  # the pages, scripts and styles


@dataclass
class Services:
    """One server's settings and the long-lived objects its routes share (built by create_app)."""

    settings: ServerSettings
    models: ModelStore
    policy: Policy
    batcher: Batcher
    decoders: ThreadPoolExecutor  # uploads are decoded here, off the event loop


async def json_object(request: Request, what: str) -> dict:
    """The request's JSON body, which must be an object (else 400 saying `what` to send)."""
    try:
        body = await request.json()
        if isinstance(body, dict):
            return body
    except ValueError:
        pass
    raise HTTPException(400, what)
