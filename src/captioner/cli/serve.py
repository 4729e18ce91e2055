"""`captioner serve`: the web app and HTTP API, refusing to start exposed without a token."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="run the web app and HTTP API",
        description="Caption uploads in the browser (and, unless "
        "--disable-training, train and manage models). API docs at /docs.",
    )
    _add_server_flags(s)
    _add_access_flags(s)
    s.set_defaults(func=cmd_serve)


def _add_server_flags(s: argparse.ArgumentParser) -> None:
    """Where it listens, what it serves and how big a request may be."""
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    s.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model folder to use as the default (default: the bundled model)",
    )
    s.add_argument(
        "--disable-training",
        action="store_true",
        help="caption-only public mode: no training routes or page",
    )
    s.add_argument(
        "--data-root",
        type=Path,
        action="append",
        help="folder whose datasets the Train page may use (repeatable)",
    )
    s.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="models, jobs and runs (default ~/.local/share/captioner)",
    )
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (20 MB)")
    s.add_argument(
        "--max-request-mb",
        type=float,
        default=256.0,
        help="largest request body, all photos together (256 MB)",
    )


def _add_access_flags(s: argparse.ArgumentParser) -> None:
    """Who may use it, and how much."""
    s.add_argument(
        "--token",
        default=None,
        help="access token for training, model changes and captioning (default: the "
        "CAPTIONER_TOKEN environment variable, which `ps` cannot show); required off loopback "
        "unless --disable-training or --insecure",
    )
    s.add_argument(
        "--public-captioning",
        action="store_true",
        help="with a token, let anyone caption (the token still guards everything else)",
    )
    s.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a DNS name the server is reached by (repeatable; requests for other names are "
        "refused against DNS rebinding; localhost and IP addresses always work)",
    )
    s.add_argument(
        "--max-jobs",
        type=positive_int,
        default=1,
        help="training jobs that run at once; more wait queued (default 1)",
    )
    s.add_argument(
        "--rate-limit",
        type=float,
        default=120.0,
        metavar="PER_MIN",
        help="photos per minute per client address, in bursts of up to max(PER_MIN, 100); "
        "loopback clients are exempt; 0 turns it off (default 120)",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="serve training and model changes off loopback with NO token (trusted networks only)",
    )
    s.add_argument("--open", action="store_true", help="open the browser")


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import threading
    import webbrowser

    import uvicorn

    from ..core.errors import ConfigError
    from ..serving.security import check_exposure
    from ..serving.server import ServerSettings, create_app

    token = args.token or os.environ.get("CAPTIONER_TOKEN") or None
    # Decide before anything binds: off loopback, state-changing routes need a token.
    exposure = check_exposure(
        args.host,
        token=token,
        insecure=args.insecure,
        allow_training=not args.disable_training,
        public_captioning=args.public_captioning,
    )
    if not exposure.ok:
        raise ConfigError(exposure.message)
    from ..vision.images import pixel_limit

    pixel_limit()  # a bad CAPTIONER_MAX_PIXELS fails at start, not on every upload
    settings = ServerSettings(
        model=args.model,
        allow_training=not args.disable_training,
        data_roots=args.data_root or [],
        max_upload_mb=args.max_upload_mb,
        token=token,
        public_captioning=args.public_captioning,
        host=args.host,
        allowed_hosts=args.allowed_host or [],
        max_request_mb=args.max_request_mb,
        rate_limit=args.rate_limit,
        max_jobs=args.max_jobs,
    )
    if args.state_dir:
        settings.state_dir = args.state_dir
    app = create_app(settings)
    url = f"http://{args.host}:{args.port}/"
    print(f"captioner is serving {url} (training {'off' if args.disable_training else 'on'})")
    print(exposure.message, flush=True)
    if args.open:
        threading.Timer(1.5, webbrowser.open, (url,)).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
