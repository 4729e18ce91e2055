"""Who may use the server, and how much: the start-up exposure decision, access tokens and the
login cookie, same-origin and Host checks, request-size caps, per-client rate limits and
disk-full answers. `guard.Guard` (one ASGI middleware) applies the request rules before any
route runs, so a route cannot forget them; each route declares its own access beside it.

Why each rule exists:
- Host check: DNS rebinding lets any web page talk to a loopback server under the page's own
  name; the server answers only to names it is known by (an IP literal cannot be rebound).
- Origin / Sec-Fetch-Site: a page on another site can POST forms (multipart, urlencoded,
  text/plain) without CORS; state-changing requests must come from the server's own pages or
  from non-browser clients (which send neither header).
- JSON routes refuse other content types (415), so a cross-site "simple" request cannot
  smuggle JSON in a text/plain body.
- Body caps are checked on Content-Length first and again on the bytes as they arrive, so a
  1 GB upload is refused before it is spooled to disk.
- Failed sign-ins (a wrong token at /login or as `Authorization: Bearer`) are limited per client
  address, loopback included: a page or process on this machine can guess as fast as anyone.
- X-Forwarded-For / X-Forwarded-Proto are believed only from the proxies named with
  `--trusted-proxy`: from anyone else they are the client's own words, and rotating them would
  give each guess or upload a fresh rate-limit bucket.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Scope

from ..core.errors import ConfigError

COOKIE = "captioner_session"
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
LOGIN_TRIES = 10  # failed sign-ins a minute per client address (and at once), loopback included


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass
class Exposure:
    ok: bool
    message: str  # the notice to print, or why the server refuses to start


def check_exposure(
    host: str,
    *,
    token: str | None,
    insecure: bool,
    allow_training: bool,
    public_captioning: bool = False,
) -> Exposure:
    """Decide whether `captioner serve` may bind `host`, and say what will be exposed."""
    if token is not None and not token.strip():
        # Typed tokens are stripped before they are compared, so a blank one never matches.
        return Exposure(
            False,
            "the access token is blank: no one could ever sign in. Set CAPTIONER_TOKEN (or "
            "--token) to 16 or more random characters, or leave it unset",
        )
    if is_loopback(host):
        note = "; the token guards it" if token else "; no token needed"
        return Exposure(True, f"  only this machine can reach it{note}")
    where = (
        "every network interface of this machine"
        if host in ("0.0.0.0", "::", "")
        else f"the network address {host}"
    )
    if not token and allow_training and not insecure:
        return Exposure(
            False,
            f"refusing to serve on {host} without an access token: anyone who can reach "
            "it could start training jobs and change or delete models. Set CAPTIONER_TOKEN "
            "(or --token), or add --disable-training for a caption-only server, or --insecure "
            "on a network you trust",
        )
    if token:
        captioning = "open to anyone (--public-captioning)" if public_captioning else "token"
    else:
        captioning = "open to anyone who can reach it"
    if not allow_training:
        changes = "not served (caption-only: no training, no model changes)"
    elif token:
        changes = "token (Authorization: Bearer TOKEN, or log in at /login)"
    else:
        changes = "OPEN TO ANYONE WHO CAN REACH IT (--insecure)"
    lines = [
        f"NOTICE: captioner is reachable from {where}.",
        f"  captioning:               {captioning}",
        f"  training and model edits: {changes}",
        "  always on: same-origin and Host checks (--allowed-host NAME for a DNS name),",
        "             request-size caps, per-client caption rate limit",
    ]
    if token and len(token) < 16:
        lines.append("  WARNING: the token is short; use 16 or more random characters")
    if not token or insecure:
        lines.append(
            "  Use a token (CAPTIONER_TOKEN) and HTTPS (a reverse proxy) on open networks."
        )
    return Exposure(True, "\n".join(lines))


def session_value(token: str) -> str:
    """The login cookie's value: derived from the token (never the token itself), so changing
    the token logs every browser out."""
    return hmac.new(token.encode(), b"captioner-session-v1", hashlib.sha256).hexdigest()


def split_host(value: str) -> str:
    """The host part of a Host or Origin netloc, lower-case, without port or trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class RateLimiter:
    """A token bucket per client: `capacity` images at once, refilled at `per_minute`."""

    def __init__(self, per_minute: float, capacity: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(capacity)
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (level, time)
        self.lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        level, then = self.buckets.get(key, (self.capacity, now))
        return min(self.capacity, level + (now - then) * self.rate)

    def wait(self, key: str, cost: float = 1.0) -> int:
        """Seconds until `cost` images fit (0: now), without taking them."""
        with self.lock:
            missing = cost - self._level(key, time.monotonic())
        return 0 if missing <= 0 else max(1, math.ceil(missing / self.rate))

    def take(self, key: str, cost: float) -> int:
        """Take `cost` images from the bucket and return 0, or return the seconds to wait."""
        with self.lock:
            now = time.monotonic()
            level = self._level(key, now)
            if level < cost:
                return max(1, math.ceil((cost - level) / self.rate))
            self.buckets[key] = (level - cost, now)
            if len(self.buckets) > 10_000:  # forget clients whose bucket has refilled
                full = [k for k in self.buckets if self._level(k, now) >= self.capacity]
                for k in full:
                    del self.buckets[k]
            return 0


@dataclass(frozen=True)
class Refusal:
    """A request refused before its route runs (or by its rate limit): a JSON error, or a
    redirect to `location` (a page asking for the token sends the browser to /login)."""

    status: int
    detail: str = ""
    headers: dict[str, str] | None = None
    location: str | None = None

    def response(self) -> Response:
        if self.location is not None:
            return RedirectResponse(self.location, status_code=self.status)
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=self.headers)

    def error(self) -> HTTPException:
        """The same refusal raised from inside a route."""
        return HTTPException(self.status, self.detail, headers=self.headers)


def client_host(scope: Scope) -> str:
    """The client's address as the rules see it ("" when the server does not know it)."""
    return (scope.get("client") or ("",))[0]


def proxy_networks(proxies: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """`--trusted-proxy` values (addresses or networks) as networks; ConfigError names a bad one."""
    networks = []
    for value in proxies:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"--trusted-proxy {value!r} is not an IP address or network; give the proxy's "
                "address as it connects to this server, e.g. 127.0.0.1 or 10.0.0.0/8"
            ) from None
    return networks


def _in_networks(host: str, networks: list) -> bool:
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return False
    return any(address in n for n in networks)


def forwarded(scope: Scope, proxies: list) -> Scope:
    """The scope with the client address (and scheme) a trusted proxy reports: only when the
    connection comes from one of `proxies`; the client is the nearest X-Forwarded-For hop that
    is not itself a trusted proxy (hops further left are whatever the client wrote)."""
    peer = client_host(scope)
    if not proxies or not _in_networks(peer, proxies):
        return scope
    headers = Headers(scope=scope)
    hops = [h.strip() for v in headers.getlist("x-forwarded-for") for h in v.split(",")]
    client = peer
    for hop in reversed([h for h in hops if h]):
        client = hop
        if not _in_networks(hop, proxies):
            break
    proto = headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
    scheme = proto if proto in ("http", "https") else scope.get("scheme", "http")
    return {**scope, "client": (client, 0), "scheme": scheme}


@dataclass
class Policy:
    """The request rules a server was started with (built from ServerSettings)."""

    token: str | None = None
    public_captioning: bool = False
    bind_host: str = "127.0.0.1"
    allowed_hosts: Iterable[str] = ()
    max_request_bytes: int = 256 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    limiter: RateLimiter | None = None
    trusted_proxies: Iterable[str] = ()  # whose X-Forwarded-For is believed
    login_limiter: RateLimiter = field(
        default_factory=lambda: RateLimiter(LOGIN_TRIES, LOGIN_TRIES)
    )
    hosts: set[str] = field(init=False)
    proxies: list = field(init=False)

    def __post_init__(self) -> None:
        self.proxies = proxy_networks(self.trusted_proxies)
        self.hosts = {"localhost", "127.0.0.1", "::1"} | {split_host(h) for h in self.allowed_hosts}
        if self.bind_host not in ("0.0.0.0", "::", ""):
            self.hosts.add(split_host(self.bind_host))

    def host_allowed(self, host_header: str) -> bool:
        host = split_host(host_header)
        # An IP literal cannot be rebound: a page can only use it as its own origin if that
        # origin is this server.
        return bool(host) and ("*" in self.hosts or host in self.hosts or _is_ip(host))

    def authorized(self, headers: Headers) -> bool:
        if not self.token:
            return True
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return hmac.compare_digest(auth[7:].strip().encode(), self.token.encode())
        cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), session_value(self.token).encode())

    def over_limit(
        self, client: str, cost: float = 1.0, *, bucket: str = "", take: bool = True
    ) -> Refusal | None:
        """Every rate limit goes through here: take `cost` from the client's `bucket` (""
        photos, "login" failed sign-ins), or with take=False only check that `cost` would fit;
        a 429 refusal when it does not. Loopback clients are exempt from the photo limit (one
        person at their own machine, the bench), never from the login limit."""
        login = bucket == "login"
        limiter = self.login_limiter if login else self.limiter
        if limiter is None or (not login and is_loopback(client)):
            return None
        wait = limiter.take(client, cost) if take else limiter.wait(client, cost)
        if not wait:
            return None
        what = (
            f"failed sign-ins (at most {LOGIN_TRIES} a minute)"
            if login
            else "photos (the server's --rate-limit sets how many per minute)"
        )
        return Refusal(
            429,
            f"too many {what} from your address; try again in {wait} s",
            {"Retry-After": str(wait)},
        )

    def shows_paths(self, headers: Headers) -> bool:
        """Whether an answer may name absolute server paths: to a request that showed the token,
        or, on a server without one, only when nothing but this machine can reach it."""
        return self.authorized(headers) if self.token else is_loopback(self.bind_host)

    def too_large(self, limit: int) -> str:
        if limit == self.max_request_bytes:
            return (
                f"request body is larger than {limit / 2**20:g} MB; send fewer files per "
                "request or start the server with a larger --max-request-mb"
            )
        return f"JSON body is larger than {limit // 1024} KB; send only the settings"


def cross_origin(headers: Headers) -> str | None:
    """Why a state-changing request looks cross-origin, or None when it is same-origin or
    from a non-browser client."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site}"
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    if origin == "null" or not parts.netloc:
        return "Origin is opaque (null)"
    default = {"http": 80, "https": 443}.get(parts.scheme)

    def norm(netloc: str) -> str:
        host = split_host(netloc)
        port = netloc.rsplit(":", 1)[1] if netloc.rsplit(":", 1)[-1].isdigit() else default
        return f"{host}:{port}"

    if norm(parts.netloc) != norm(headers.get("host", "")):
        return f"Origin {origin} is not this server"
    return None


def disk_full(exc: BaseException | None) -> bool:
    """True when `exc`, or an error it was raised from, means the disk or quota is full."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


DISK_FULL_DETAIL = (
    "the server's disk is full (or its quota is used up); nothing was saved. "
    "Free some space on the server and try again"
)
