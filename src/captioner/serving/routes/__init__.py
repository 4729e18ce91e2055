"""The HTTP routes, grouped by concern. Each `add_*` function registers one group on the app
with its access declared beside each route (`guard.Access`); `server.create_app` calls them."""

from .captions import add_caption_routes
from .common import Services
from .datasets import add_dataset_routes
from .models import add_model_routes
from .pages import add_docs, add_login_routes, add_pages
from .training import add_training_routes

__all__ = [
    "Services",
    "add_caption_routes",
    "add_dataset_routes",
    "add_docs",
    "add_login_routes",
    "add_model_routes",
    "add_pages",
    "add_training_routes",
]
