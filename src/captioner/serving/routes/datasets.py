"""GET /api/datasets: the datasets under the server's data roots, for the Train page's picker."""

from __future__ import annotations

from fastapi import FastAPI

from ...config import DATASET_FORMATS
from ..datapaths import absolute_roots
from ..dataset_index import DatasetIndex
from ..guard import TOKEN
from .common import Services


def add_dataset_routes(app: FastAPI, services: Services) -> None:
    roots = absolute_roots(services.settings.data_roots)  # symlinks kept: see datapaths.py
    datasets = DatasetIndex(roots)

    @app.get("/api/datasets")
    @TOKEN
    def list_datasets(refresh: bool = False) -> dict:
        """The data roots and the datasets found in them (format, images, captions, splits);
        scanned in a request thread with bounded depth, cached for 30 s (`?refresh=true`)."""
        return {
            "roots": [str(r) for r in roots],
            "formats": list(DATASET_FORMATS),
            "datasets": datasets.list(refresh),
        }
