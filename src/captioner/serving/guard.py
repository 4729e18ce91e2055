"""Access declared per route, and the one ASGI middleware (`Guard`) that enforces it before
routing: the client address a trusted proxy reports (`--trusted-proxy`), Host (421),
cross-origin state changes (403), token (401, or a redirect to /login for a page; a wrong Bearer
token counts as a failed sign-in, 429 past the login limit), content type (415), body caps (413),
the caption rate limit (429), JSON depth (400).

A route states its own rules where it is defined, e.g.::

    @app.post("/api/captions")
    @Access(public=True, body=Body.MULTIPART, captioning=True)
    async def captions(...): ...

`Guard` finds the route a request will reach (as the router does: the first full match, else
the first route with the path but another method) and applies that declaration. A path no
route matches gets the default: token, JSON body.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeVar
from urllib.parse import quote

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .security import (
    DISK_FULL_DETAIL,
    Policy,
    Refusal,
    client_host,
    cross_origin,
    disk_full,
    forwarded,
)

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_JSON_DEPTH = 32
# A body that stops arriving for this long is answered 408 and its connection dropped: half-sent
# uploads would otherwise hold a connection (and a file descriptor) each, for good.
BODY_TIMEOUT_S = 30.0
# Photo uploads handled at once (received, decoded or captioned); more are answered 503 before
# their body is read, so slow or stalled uploads cannot take every connection from /healthz.
MAX_UPLOADS = 64
_UPLOAD = "captioner.upload"  # scope key: this request holds an upload slot

T = TypeVar("T")


class Auth(StrEnum):
    OPEN = "open"  # never needs the token: health, login, docs, static files
    TOKEN = "token"  # the token or the login cookie, else 401
    PAGE = "page"  # like TOKEN, but a browser asking for the page is sent to /login


class Body(StrEnum):
    JSON = "json"  # any body must be JSON (so no cross-site form can smuggle one), 1 MB cap
    MULTIPART = "multipart"  # photo uploads, capped at --max-request-mb
    FORM = "form"  # the login form, 1 MB cap


@dataclass(frozen=True)
class Access:
    """What a route needs; used as a decorator on its endpoint (or called on a mounted app)."""

    auth: Auth = Auth.TOKEN
    body: Body = Body.JSON
    body_required: bool = False  # a request without a body is refused (415) before the route
    public: bool = False  # open to anyone when the server captions publicly
    captioning: bool = False  # refused (429) before the upload when the photo bucket is empty

    def __call__(self, target: T) -> T:
        target.access = self  # type: ignore[attr-defined]
        return target


OPEN = Access(Auth.OPEN)
TOKEN = Access()  # the default, spelled out beside routes that need the token


def declared(route: BaseRoute) -> Access:
    """A route's declaration: on the route, its endpoint, or its mounted app; else the default."""
    for owner in (route, getattr(route, "endpoint", None), getattr(route, "app", None)):
        found = getattr(owner, "access", None)
        if isinstance(found, Access):
            return found
    return Access()


def route_access(router: Router, scope: Scope) -> Access:
    """The declaration of the route this request reaches. HEAD and OPTIONS are looked up as the
    GET they stand for. A route that has the path but not the method (the app answers 405)
    lends its token and body rules, not what it grants its own method (public, body required)."""
    method = "GET" if scope["method"] in SAFE_METHODS else scope["method"]
    probe = {**scope, "method": method}  # matching may add keys: never to the real scope
    partial = None
    for route in router.routes:
        match, _ = route.matches(probe)
        if match is Match.FULL:
            return declared(route)
        if match is Match.PARTIAL and partial is None:
            partial = route
    if partial is None:
        return Access()
    return replace(declared(partial), public=False, body_required=False)


def json_depth(value: object) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict | list):
            depth = max(depth, d)
            if depth > MAX_JSON_DEPTH:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, d + 1) for c in children)
    return depth


def _media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


class Guard:
    """ASGI middleware that applies a Policy and each route's Access to every HTTP request
    before routing."""

    def __init__(
        self,
        app: ASGIApp,
        policy: Policy,
        router: Router,
        body_timeout: float = BODY_TIMEOUT_S,
        max_uploads: int = MAX_UPLOADS,
    ) -> None:
        self.app = app
        self.policy = policy
        self.router = router
        self.body_timeout = body_timeout
        self.max_uploads = max_uploads
        self.uploads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = forwarded(scope, self.policy.proxies)  # every rule sees the real client
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            refusal, rx = await self._check(scope, receive)
            if refusal is not None:
                await refusal.response()(scope, receive, send_tracked)
            else:
                await self.app(scope, rx, send_tracked)
        except HTTPException as exc:  # a body cap hit outside a route
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, exc.status_code)(scope, receive, send)
        except Exception as exc:
            if started or not disk_full(exc):
                raise
            await JSONResponse({"detail": DISK_FULL_DETAIL}, 507)(scope, receive, send)
        finally:
            if scope.pop(_UPLOAD, False):
                self.uploads -= 1

    async def _check(self, scope: Scope, receive: Receive) -> tuple[Refusal | None, Receive]:
        """(a refusal or None, the receive callable the app must then use)."""
        access = route_access(self.router, scope)
        refusal = self._rules(scope, access)
        if refusal is not None:
            return refusal, receive
        return await self._body(scope, receive, access)

    def _rules(self, scope: Scope, access: Access) -> Refusal | None:
        p = self.policy
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        host = headers.get("host", "")
        if not p.host_allowed(host):
            return Refusal(
                421,
                f"this server does not answer to the name {headers.get('host', '')!r}; if "
                "that is its real name, start it with --allowed-host NAME",
            )
        if method not in SAFE_METHODS and (why := cross_origin(headers)):
            return Refusal(
                403,
                f"cross-origin request refused ({why}): change data from this server's own "
                "pages, or from a script or curl (no Origin header)",
            )
        needs_token = access.auth is not Auth.OPEN and not (access.public and p.public_captioning)
        # A Bearer token is a sign-in attempt: limited like the login form, and checked for the
        # limit first, so a guess past it learns nothing (not even a right guess).
        bearer = bool(p.token) and needs_token and "authorization" in headers
        client = client_host(scope)
        if bearer and (refusal := p.over_limit(client, bucket="login", take=False)):
            return refusal
        if needs_token and not p.authorized(headers):
            if bearer:
                p.over_limit(client, bucket="login")  # one failed try
            if access.auth is Auth.PAGE and method in SAFE_METHODS:
                return Refusal(303, location=f"/login?next={quote(path)}")
            return Refusal(
                401,
                "this server needs its access token: send 'Authorization: Bearer TOKEN', "
                "or log in at /login",
                {"WWW-Authenticate": "Bearer"},
            )
        return None

    async def _body(
        self, scope: Scope, receive: Receive, access: Access
    ) -> tuple[Refusal | None, Receive]:
        p = self.policy
        headers = Headers(scope=scope)
        if scope["method"] in SAFE_METHODS:
            return None, receive
        # What the body must be, and how big it may be.
        media = _media_type(headers)
        length_header = headers.get("content-length")
        has_body = headers.get("transfer-encoding", "").lower() == "chunked" or (
            length_header not in (None, "", "0")
        )
        if access.body is Body.MULTIPART:
            limit = p.max_request_bytes
            ok = not has_body or media == "multipart/form-data"
            want = "multipart/form-data (the photos as 'files' fields)"
        elif access.body is Body.FORM:
            limit = p.max_json_bytes
            ok = not has_body or media in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            )
            want = "a form (application/x-www-form-urlencoded)"
        else:
            limit = p.max_json_bytes
            needs = has_body or access.body_required
            ok = not needs or media == "application/json" or media.endswith("+json")
            want = "JSON (Content-Type: application/json)"
        if not ok:
            what = media or "a body without Content-Type"
            return Refusal(415, f"send {want}, not {what}"), receive
        try:
            if length_header and int(length_header) > limit:
                return Refusal(413, p.too_large(limit)), receive
        except ValueError:
            return Refusal(400, "Content-Length is not a number"), receive
        if access.captioning and (refusal := p.over_limit(client_host(scope), take=False)):
            return refusal, receive
        if access.body is Body.MULTIPART and has_body:
            if self.uploads >= self.max_uploads:
                busy = f"{self.max_uploads} uploads are being handled; retry in a few seconds"
                return Refusal(503, busy, {"Retry-After": "5"}), receive
            self.uploads += 1
            scope[_UPLOAD] = True  # given back when the request ends (__call__)

        received = 0
        timeout = self.body_timeout

        async def counted() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body stopped arriving (nothing for {timeout:g} s); "
                    "send it again in one go",
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, p.too_large(limit))
            return message

        if access.body is Body.JSON and has_body:
            return await self._check_json(counted)
        return None, counted

    async def _check_json(self, receive: Receive) -> tuple[Refusal | None, Receive]:
        """Read the (small, capped) JSON body, refuse invalid or deeply nested JSON with a 400,
        then hand the same bytes to the route."""
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            depth = json_depth(json.loads(body)) if body else 0
        except RecursionError:
            depth = MAX_JSON_DEPTH + 1
        except ValueError as exc:
            return Refusal(400, f"the body is not valid JSON: {exc}"), receive
        if depth > MAX_JSON_DEPTH:
            too_deep = f"JSON nested deeper than {MAX_JSON_DEPTH} levels is refused"
            return Refusal(400, too_deep), receive
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay
