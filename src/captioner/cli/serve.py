"""`captioner serve`: the web app and HTTP API, refusing to start exposed without a token."""

from __future__ import annotations

import argparse
import contextlib
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
    s.add_argument(
        "--max-connections",
        type=positive_int,
        default=512,
        metavar="N",
        help="open connections at once; requests past it are answered 503 so file "
        "descriptors never run out (default 512)",
    )
    s.add_argument(
        "--body-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a request body that stops arriving for this long is answered 408 and dropped "
        "(default 30)",
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
        "--max-queued",
        type=positive_int,
        default=20,
        help="training jobs that may wait for a slot; more are refused with 429 (default 20)",
    )
    s.add_argument(
        "--max-loaded-models",
        type=positive_int,
        default=4,
        metavar="N",
        help="models kept loaded for captioning, least recently used dropped first; the "
        "default model always stays (50-100 MB each; default 4)",
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
        "--trusted-proxy",
        action="append",
        metavar="ADDR",
        help="a reverse proxy (IP address or network) whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (repeatable); from anyone else they are ignored",
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
    from ..vision.limits import decode_limit, pixel_limit

    pixel_limit()  # a bad CAPTIONER_MAX_PIXELS (or _MAX_DECODE_MB) fails at start, not per upload
    decode_limit()
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
        max_queued=args.max_queued,
        max_loaded_models=args.max_loaded_models,
        trusted_proxies=args.trusted_proxy or [],
        body_timeout=args.body_timeout,
    )
    if args.state_dir:
        settings.state_dir = args.state_dir
    app = create_app(settings)
    url = f"http://{args.host}:{args.port}/"
    print(f"captioner is serving {url} (training {'off' if args.disable_training else 'on'})")
    print(exposure.message, flush=True)
    if args.open:
        threading.Timer(1.5, webbrowser.open, (url,)).start()
    # proxy_headers=False: Uvicorn would believe X-Forwarded-For from any loopback peer; the
    # app believes it from --trusted-proxy only (security.forwarded).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        proxy_headers=False,
        limit_concurrency=_connection_cap(args.max_connections),
        timeout_keep_alive=5,  # an idle kept-alive connection is closed after 5 s
    )
    return 0


def _connection_cap(wanted: int) -> int:
    """`wanted`, with room for it under the open-file limit (raised to fit where allowed):
    each connection is a file descriptor, and models, jobs and logs need ~256 more."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    cap = max(16, soft - 256)
    print(f"connections capped at {cap}: the open-file limit is {soft} (raise it: ulimit -n)")
    return cap


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 1 day")
    return value
