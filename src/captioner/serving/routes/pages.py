"""The web pages and what they stand on: the HTML pages, the static files, the login form
(and logout), and the offline API docs."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route

from ..guard import OPEN, Access, Auth, Body
from ..security import COOKIE, client_host, session_value
from .common import STATIC, Services

LOGIN = Access(Auth.OPEN, body=Body.FORM)  # both methods: a stray PUT gets the form's rules


def add_docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle package: FastAPI's default /docs loads it from a
    CDN, and the app must work with no internet. The docs and /openapi.json are open."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount(
        "/static/swagger",
        OPEN(StaticFiles(directory=swagger_ui_bundle.swagger_ui_path)),
        name="swagger",
    )
    for route in app.routes:  # FastAPI's own /openapi.json
        if isinstance(route, Route) and route.path == app.openapi_url:
            OPEN(route)

    @app.get("/docs", include_in_schema=False)
    @OPEN
    def docs():
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="captioner API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def add_login_routes(app: FastAPI, services: Services) -> None:
    """The pages' way to present the token: a form that sets an HttpOnly, SameSite=Strict
    cookie (the API also takes `Authorization: Bearer TOKEN`)."""
    policy = services.policy  # its token is the one the server checks (stripped)

    def safe_next(value: str) -> str:  # only this server's own pages, never another site
        return value if value.startswith("/") and not value.startswith(("//", "/\\")) else "/"

    @app.get("/login", include_in_schema=False)
    @LOGIN
    def login_page() -> Response:
        if not policy.token:
            return RedirectResponse("/", status_code=303)
        return FileResponse(STATIC / "login.html", media_type="text/html")

    @app.post("/login", include_in_schema=False)
    @LOGIN
    async def login(request: Request) -> Response:
        form = await request.form()
        target = safe_next(str(form.get("next") or "/"))
        token = policy.token
        if not token:
            return RedirectResponse(target, status_code=303)
        given = str(form.get("token") or "").strip()
        # Slows down guessing, from every address (loopback too): checked before the token is,
        # so a guess past the limit learns nothing; only a failed try is counted.
        client = client_host(request.scope)
        if refusal := policy.over_limit(client, bucket="login", take=False):
            raise refusal.error()
        if not hmac.compare_digest(given.encode(), token.encode()):
            policy.over_limit(client, bucket="login")
            return RedirectResponse(f"/login?failed=1&next={quote(target)}", status_code=303)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            session_value(token),
            max_age=7 * 24 * 3600,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    @OPEN
    def logout() -> Response:
        response = RedirectResponse("/login" if policy.token else "/", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response


def add_pages(app: FastAPI, allow_training: bool) -> None:
    """The HTML pages (a browser without the token is sent to /login) and the static files."""
    page = Access(Auth.PAGE)
    for name in ("train", "models") if allow_training else ("models",):
        app.add_api_route(f"/{name}", page(_page(f"{name}.html")), include_in_schema=False)
    home = Access(Auth.PAGE, public=True)  # the captioning page is open when captioning is
    app.add_api_route("/", home(_page("index.html")), include_in_schema=False)
    app.mount("/static", OPEN(StaticFiles(directory=STATIC)), name="static")


def _page(name: str) -> Callable[[], FileResponse]:
    def serve() -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html")

    return serve
