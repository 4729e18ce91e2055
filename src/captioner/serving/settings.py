"""`ServerSettings`: what one `captioner serve` run is configured with (the CLI's flags, or a
test's arguments). Its own module, so the routes can read it without importing the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.paths import default_state_dir


@dataclass
class ServerSettings:
    state_dir: Path = field(default_factory=default_state_dir)
    model: Path | None = None  # this server run's default model (the saved default is kept)
    allow_training: bool = True
    data_roots: list[Path] = field(default_factory=list)  # training data must live under one
    max_upload_mb: float = 20.0
    max_files: int = 100
    max_jobs: int = 1  # training processes at once; more jobs wait queued
    max_queued: int = 20  # jobs waiting for a slot; more are refused (429)
    max_loaded_models: int = 4  # models kept loaded for captioning (LRU; the default stays)
    # Access control (security.py, guard.py). With a token, every route but
    # captioning-when-public, /healthz, /login and static files needs it.
    token: str | None = None
    public_captioning: bool = False
    host: str = "127.0.0.1"  # the address served: one of the names the server answers to
    allowed_hosts: list[str] = field(default_factory=list)  # more names (DNS rebinding check)
    max_request_mb: float = 256.0  # a whole request body (several photos)
    # Photos per minute per client address (token bucket; burst = max(this, max_files)).
    # 0 turns it off; loopback clients are exempt.
    rate_limit: float = 120.0
    # Proxies (addresses or networks) whose X-Forwarded-For/-Proto are believed; from anyone
    # else those headers are ignored.
    trusted_proxies: list[str] = field(default_factory=list)
    decode_threads: int = 2  # uploads decoded off the event loop, at most this many at once
    body_timeout: float = 30.0  # seconds a request body may stop arriving before a 408
    max_uploads: int = 64  # photo requests handled at once; more are answered 503 unread
