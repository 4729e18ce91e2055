"""Access control and request limits, against the real app: TestClient for the routes, a real
Uvicorn server and raw sockets where the transport matters, and `captioner serve` as a real
subprocess for the start-up decision."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import serve_in_thread
from fastapi.testclient import TestClient

from captioner.serving.security import check_exposure, session_value
from captioner.serving.server import ServerSettings, create_app

TOKEN = "correct-horse-battery-staple-42"
SAME = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
REMOTE = ("203.0.113.7", 40000)  # a documentation address: not loopback, so rate-limited


def make_client(tmp_path: Path, client=("127.0.0.1", 40000), **kw) -> TestClient:
    kw.setdefault("allow_training", False)
    settings = ServerSettings(state_dir=tmp_path / "state", **kw)
    return TestClient(
        create_app(settings),
        base_url="http://127.0.0.1:8000",
        client=client,
        follow_redirects=False,
    )


def photo(photo_dir: Path, name: str = "coffee.jpg", as_name: str | None = None):
    return ("files", (as_name or name, (photo_dir / name).read_bytes(), "image/jpeg"))


# -- same-origin, content type, Host ---------------------------------------------------------


def test_cross_origin_state_changes_are_refused(tmp_path):
    with make_client(tmp_path, allow_training=True) as c:
        url = "/api/models/bundled/default"
        for headers in (
            {"Origin": "https://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:3000"},
            {"Origin": "null"},
        ):
            res = c.post(url, headers=headers)
            assert res.status_code == 403, headers
            assert "cross-origin" in res.json()["detail"]
        assert (
            c.delete("/api/models/x", headers={"Origin": "https://evil.example"}).status_code == 403
        )
        # The server's own pages (and scripts without Origin) still work.
        assert c.post(url, headers=SAME).status_code == 200
        assert c.post(url).status_code == 200
        # Reading is not refused: GET is not state-changing.
        assert c.get("/api/models", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_json_routes_refuse_other_bodies_and_bad_json(tmp_path):
    with make_client(tmp_path, allow_training=True, data_roots=[tmp_path]) as c:
        res = c.post("/api/jobs", content=b'{"epochs": 1}', headers={"Content-Type": "text/plain"})
        assert res.status_code == 415 and "application/json" in res.json()["detail"]
        form = c.post("/api/jobs", data={"epochs": "1"})
        assert form.status_code == 415
        assert c.post("/api/jobs").status_code == 415  # no body at all
        deep = b"[" * 100_000 + b"]" * 100_000
        res = c.post("/api/jobs", content=deep, headers={"Content-Type": "application/json"})
        assert res.status_code == 400 and "nested deeper" in res.json()["detail"]
        res = c.post("/api/jobs", content=b"{nope", headers={"Content-Type": "application/json"})
        assert res.status_code == 400 and "not valid JSON" in res.json()["detail"]
        # A valid JSON body reaches the route (which then checks the data folder).
        res = c.post("/api/jobs", json={"dataset_path": "/elsewhere"})
        assert res.status_code == 403 and "data folder" in res.json()["detail"]


def test_foreign_host_is_refused_allowed_host_accepted(tmp_path):
    with make_client(tmp_path, allowed_hosts=["captions.example.org"]) as c:
        res = c.get("/healthz", headers={"Host": "evil.example"})
        assert res.status_code == 421 and "--allowed-host" in res.json()["detail"]
        assert c.get("/api/models", headers={"Host": "rebind.evil.example:8000"}).status_code == 421
        for host in ("captions.example.org", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        # An IP address cannot be rebound, so a server reached by its LAN address works.
        assert c.get("/healthz", headers={"Host": "192.168.1.20:8000"}).status_code == 200


# -- start-up decision -------------------------------------------------------------------------


def test_serve_off_loopback_without_token_exits_before_binding(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CAPTIONER_TOKEN"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "captioner", "serve", "--host", "0.0.0.0", "--port", str(port)]
    proc = subprocess.run(
        [*cmd, "--state-dir", str(tmp_path / "s")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refusing to serve on 0.0.0.0 without an access token" in proc.stderr
    assert "CAPTIONER_TOKEN" in proc.stderr and "--disable-training" in proc.stderr
    assert "serving" not in proc.stdout


def test_exposure_decision():
    assert check_exposure("127.0.0.1", token=None, insecure=False, allow_training=True).ok
    assert check_exposure("::1", token=None, insecure=False, allow_training=True).ok
    assert not check_exposure("0.0.0.0", token=None, insecure=False, allow_training=True).ok
    assert not check_exposure("192.168.1.5", token=None, insecure=False, allow_training=True).ok
    caption_only = check_exposure("0.0.0.0", token=None, insecure=False, allow_training=False)
    assert caption_only.ok and "caption-only" in caption_only.message
    assert "every network interface" in caption_only.message
    with_token = check_exposure("0.0.0.0", token=TOKEN, insecure=False, allow_training=True)
    assert with_token.ok and "token" in with_token.message
    insecure = check_exposure("0.0.0.0", token=None, insecure=True, allow_training=True)
    assert insecure.ok and "OPEN TO ANYONE" in insecure.message


# -- token, login --------------------------------------------------------------------------------


def test_token_guards_changes_and_captioning(tmp_path, photo_dir):
    with make_client(tmp_path, allow_training=True, token=TOKEN) as c:
        url = "/api/models/bundled/default"
        res = c.post(url)
        assert res.status_code == 401 and res.headers["www-authenticate"] == "Bearer"
        assert "/login" in res.json()["detail"]
        assert c.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.post("/api/captions", files=[photo(photo_dir)]).status_code == 401
        assert c.get("/api/models").status_code == 401
        assert c.get("/api/jobs").status_code == 401
        page = c.get("/models")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/models"
        assert c.get("/healthz").json()["token_required"] is True
        assert c.get("/login").status_code == 200 and c.get("/static/login.js").status_code == 200
    with make_client(tmp_path, allow_training=True, token=TOKEN, public_captioning=True) as c:
        assert c.post("/api/captions", files=[photo(photo_dir)]).status_code == 200
        assert c.get("/").status_code == 200 and c.get("/api/models").status_code == 200
        assert c.post("/api/models/bundled/default").status_code == 401
        assert c.delete("/api/models/x").status_code == 401


def test_login_form_sets_a_strict_httponly_cookie(tmp_path):
    with make_client(tmp_path, allow_training=True, token=TOKEN) as c:
        bad = c.post("/login", data={"token": "nope", "next": "/models"})
        assert bad.status_code == 303 and bad.headers["location"].startswith("/login?failed=1")
        assert "set-cookie" not in bad.headers
        res = c.post("/login", data={"token": TOKEN, "next": "/models"}, headers=SAME)
        assert res.status_code == 303 and res.headers["location"] == "/models"
        cookie = res.headers["set-cookie"]
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "samesite", "path"} <= attrs and "samesite=strict" in cookie.lower()
        assert TOKEN not in cookie and session_value(TOKEN) in cookie
        # The cookie now opens the pages and the API, like the token does.
        assert c.get("/models").status_code == 200
        assert c.get("/api/models").status_code == 200
        assert c.post("/api/models/bundled/default", headers=SAME).status_code == 200
        # Never a redirect to another site after logging in.
        evil = c.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
        assert evil.headers["location"] == "/"
        # A login form on another site cannot log the browser in (login CSRF).
        assert (
            c.post(
                "/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}
            ).status_code
            == 403
        )


def test_caption_only_mode_serves_no_model_changes(tmp_path):
    with make_client(tmp_path, allow_training=False) as c:
        assert c.delete("/api/models/bundled").status_code in (404, 405)
        assert c.post("/api/models/bundled/default").status_code in (404, 405)
        assert c.post("/api/jobs", json={}).status_code in (404, 405)
        paths = c.get("/openapi.json").json()["paths"]
        assert all(set(ops) <= {"get"} for p, ops in paths.items() if p != "/api/captions")


# -- rate limit ------------------------------------------------------------------------------------


def test_caption_rate_limit_gives_429_with_retry_after(tmp_path, photo_dir):
    with make_client(tmp_path, client=REMOTE, rate_limit=2, max_files=3) as c:
        # The burst is max(rate, max_files) photos: one full request fits.
        res = c.post("/api/captions", files=[photo(photo_dir)] * 3)
        assert res.status_code == 200
        res = c.post("/api/captions", files=[photo(photo_dir)])
        assert res.status_code == 429 and int(res.headers["retry-after"]) >= 1
        assert "--rate-limit" in res.json()["detail"]
    # Loopback clients are exempt by default (one person at their own machine, the bench).
    with make_client(tmp_path, rate_limit=2, max_files=3) as c:
        for _ in range(3):
            assert c.post("/api/captions", files=[photo(photo_dir)] * 3).status_code == 200


# -- request size ----------------------------------------------------------------------------------


@pytest.fixture
def live(tmp_path):
    """The real app on a free loopback port, served by Uvicorn in a thread."""
    app = create_app(ServerSettings(state_dir=tmp_path / "state", max_request_mb=1))
    with serve_in_thread(app) as port:
        yield port


def raw_request(port: int, head: str, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + body)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_body_over_the_cap_is_refused_before_it_is_read(live):
    head = (
        "POST /api/captions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        "Content-Length: 1000000000\r\nConnection: close\r\n\r\n"
    )
    t0 = time.perf_counter()
    answer = raw_request(live, head)  # headers only: the server must answer without the body
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"--max-request-mb" in answer and b"1 MB" in answer
    assert time.perf_counter() - t0 < 5
    foreign = raw_request(
        live, "GET /healthz HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )
    assert foreign.startswith(b"HTTP/1.1 421") and b"--allowed-host" in foreign


def test_chunked_body_is_counted_as_it_arrives(tmp_path):
    """An endless chunked upload: the app stops reading just past the cap and answers 413."""
    app = create_app(ServerSettings(state_dir=tmp_path / "state", max_request_mb=1))
    chunk, served, sent = b"x" * 65536, [], []

    head = (
        b"--x\r\nContent-Disposition: form-data; name=files; filename=a.jpg\r\n"
        b"Content-Type: image/jpeg\r\n\r\n"
    )

    async def receive():  # one file part that never ends
        body = chunk if served else head + chunk
        served.append(len(body))
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/captions",
        "raw_path": b"/api/captions",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"multipart/form-data; boundary=x"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    assert sent[0]["status"] == 413 and b"--max-request-mb" in sent[1]["body"]
    assert sum(served) <= 1024 * 1024 + len(head + chunk)  # read no further than the cap


# -- disk full -------------------------------------------------------------------------------------


def test_disk_full_is_a_507_and_leaves_no_partial_file(tmp_path, photo_dir, monkeypatch):
    """ENOSPC cannot be produced on demand without root, so the write that would hit it
    raises it, as the OS would."""
    import starlette.formparsers

    from captioner.core import atomic

    real_open = open

    def full_disk_open(path, mode="r", *a, **kw):
        if "w" in mode and ".settings.json." in str(path):
            fh = real_open(path, mode, *a, **kw)
            fh.write = lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left"))
            return fh
        return real_open(path, mode, *a, **kw)

    with make_client(tmp_path, allow_training=True) as c:
        monkeypatch.setattr(atomic, "open", full_disk_open, raising=False)
        res = c.post("/api/models/bundled/default")
        assert res.status_code == 507 and "disk is full" in res.json()["detail"]
        state = tmp_path / "state"
        assert not (state / "settings.json").exists()
        assert not [p for p in state.iterdir() if p.name.startswith(".settings.json")]
        monkeypatch.undo()

        class FullSpool(starlette.formparsers.SpooledTemporaryFile):
            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", FullSpool)
        res = c.post("/api/captions", files=[photo(photo_dir)])
        assert res.status_code == 507 and "disk is full" in res.json()["detail"]


# -- the login flow in a real browser ------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed")
def test_login_flow_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    app = create_app(ServerSettings(state_dir=tmp_path / "state", token=TOKEN))
    with serve_in_thread(app) as port, sync_playwright() as pw:
        base = f"http://127.0.0.1:{port}"
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/models")
        assert page.url == base + "/login?next=/models"
        page.fill("#token", "wrong")
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "failed=1" in url)
        assert "not right" in page.locator("#status").inner_text()
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/models")
        page.wait_for_selector("#models .card")  # the page's fetch calls carry the cookie
        assert "bundled" in page.locator("#models").inner_text()
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["value"] == session_value(TOKEN)
        # Logged out, an API call from the page (a 401) sends the user to the login form.
        context.clear_cookies()
        page.evaluate("import('/static/app.js').then(m => m.api('/api/models')).catch(() => 0)")
        page.wait_for_url(lambda url: url == base + "/login?next=%2Fmodels")
        page.goto(base + "/")
        page.wait_for_url(lambda url: "/login?next=" in url)
        browser.close()


# -- hardening: blank tokens, failed sign-ins from anywhere, forwarded-for, server paths ---------


def test_a_blank_token_is_refused_and_surrounding_spaces_do_not_count(tmp_path):
    from captioner.core.errors import ConfigError

    for host in ("127.0.0.1", "0.0.0.0"):
        refused = check_exposure(host, token="   ", insecure=False, allow_training=True)
        assert not refused.ok and "token is blank" in refused.message
    with pytest.raises(ConfigError, match="token is blank"):
        create_app(ServerSettings(state_dir=tmp_path / "s", token=" \t "))
    # Typed tokens are stripped, so the server's own is too: ' TOKEN ' is TOKEN.
    with make_client(tmp_path, allow_training=True, token=f"  {TOKEN}\n") as c:
        ok = c.post("/api/models/bundled/default", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert c.post("/login", data={"token": TOKEN}).headers["location"] == "/"


def test_serve_refuses_a_blank_token_at_start(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "captioner", "serve", "--token", "   "]
        + ["--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.startswith("error: the access token is blank")
    assert len(res.stderr.splitlines()) == 1 and "serving" not in res.stdout


def test_failed_sign_ins_are_limited_from_loopback_too(tmp_path):
    from captioner.serving.security import LOGIN_TRIES

    right = {"Authorization": f"Bearer {TOKEN}"}
    with make_client(tmp_path, allow_training=True, token=TOKEN) as c:
        assert c.get("/api/models", headers=right).status_code == 200  # a success costs nothing
        for i in range(LOGIN_TRIES):
            wrong = {"Authorization": f"Bearer guess-{i}"}
            assert c.get("/api/models", headers=wrong).status_code == 401
        res = c.get("/api/models", headers={"Authorization": "Bearer guess-x"})
        assert res.status_code == 429 and int(res.headers["retry-after"]) >= 1
        assert "too many failed sign-ins" in res.json()["detail"]
        # Past the limit even the right token learns nothing, and the form is closed too.
        assert c.get("/api/models", headers=right).status_code == 429
        assert c.post("/login", data={"token": TOKEN}).status_code == 429
        # Without a credential a request is not a sign-in: still a plain 401 or the login page.
        assert c.get("/api/models").status_code == 401
        assert c.get("/models").status_code == 303
    with make_client(tmp_path, allow_training=True, token=TOKEN) as c:  # the form counts too
        for _ in range(LOGIN_TRIES):
            assert c.post("/login", data={"token": "nope"}).status_code == 303
        assert c.post("/login", data={"token": TOKEN}).status_code == 429


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(tmp_path, photo_dir):
    def captions(c, forwarded: str):
        return c.post(
            "/api/captions", files=[photo(photo_dir)], headers={"X-Forwarded-For": forwarded}
        )

    # Untrusted: rotating X-Forwarded-For gives no fresh bucket (one address, one limit)...
    with make_client(tmp_path, client=REMOTE, rate_limit=1, max_files=1) as c:
        assert captions(c, "198.51.100.1").status_code == 200
        assert captions(c, "198.51.100.2").status_code == 429
    # ... and from loopback it is not a way out of the loopback exemption either.
    with make_client(tmp_path, rate_limit=1, max_files=1) as c:
        assert all(captions(c, "198.51.100.9").status_code == 200 for _ in range(2))
    # A proxy named with --trusted-proxy: its clients are limited one by one, by the nearest
    # hop it did not add itself (what the client wrote further left is ignored).
    with make_client(tmp_path, rate_limit=1, max_files=1, trusted_proxies=["127.0.0.0/8"]) as c:
        assert captions(c, "10.9.9.9, 198.51.100.7").status_code == 200
        assert captions(c, "10.9.9.8, 198.51.100.7").status_code == 429
        assert captions(c, "198.51.100.8, 127.0.0.1").status_code == 200  # a proxy chain
        assert captions(c, "").status_code == 200  # no header: the proxy itself (loopback)
    with pytest.raises(Exception, match="--trusted-proxy 'proxy.example' is not an IP"):
        make_client(tmp_path, trusted_proxies=["proxy.example"])


def test_a_real_server_ignores_forwarded_for_from_loopback(tmp_path):
    """Uvicorn believes X-Forwarded-For from any loopback peer by default: every guess with a
    new address used to get a fresh sign-in bucket."""
    import httpx

    from captioner.serving.security import LOGIN_TRIES

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CAPTIONER_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--port", str(port)]
        + ["--state-dir", str(tmp_path / "s"), "--disable-training"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
        codes = [
            httpx.get(
                url + "/api/models",
                headers={"Authorization": f"Bearer guess-{i}", "X-Forwarded-For": f"10.0.0.{i}"},
            ).status_code
            for i in range(LOGIN_TRIES + 2)
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert codes == [401] * LOGIN_TRIES + [429, 429]


def test_server_paths_are_shown_only_to_the_token(tmp_path):
    models = tmp_path / "state" / "models"
    (models / "half").mkdir(parents=True)
    (models / "half" / "config.json").write_text("{not json")
    (tmp_path / "state" / "settings.json").write_text('{"default_model": "half"}')
    right = {"Authorization": f"Bearer {TOKEN}"}
    with make_client(tmp_path, token=TOKEN, public_captioning=True) as c:
        health = c.get("/healthz")
        assert health.json()["status"] == "degraded" and str(tmp_path) not in health.text
        assert "models/half/config.json:1: not valid JSON" in health.json()["default_model_error"]
        public = {m["id"]: m for m in c.get("/api/models").json()}  # open: public captioning
        assert public["half"]["broken"] and str(tmp_path) not in public["half"]["error"]
        assert public["half"]["error"].startswith("models/half/config.json:1: not valid JSON")
        shown = {m["id"]: m for m in c.get("/api/models", headers=right).json()}
        assert shown["half"]["error"].startswith(f"{models / 'half'}/config.json:1:")
        one = c.get("/api/models/half", headers=right).json()
        assert one["error"] == shown["half"]["error"]
