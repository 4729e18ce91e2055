"""`captioner download coco` against a local HTTP server with Range support (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile

import pytest

from captioner.cli import main as cli
from captioner.data import download
from captioner.data.download import DownloadError, download_coco


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


class Server:
    """Serves `files` (URL path -> bytes) with HTTP Range; can cut a response short once."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # URL path -> bytes to send before dropping once
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send(head=True)

            def do_GET(self):
                self.send(head=False)

            def send(self, head: bool):
                outer.requests.append((self.command, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not head:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if self.path in outer.cut:
                    self.wfile.write(body[: outer.cut.pop(self.path)])
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def coco_mirror(tmp_path):
    """Small synthetic archives with the official names and layout, and their checksums."""
    server = Server()
    ann = make_zip(
        {
            "annotations/captions_val2017.json": json.dumps(
                {
                    "images": [{"id": 1, "file_name": "000000000001.jpg"}],
                    "annotations": [{"image_id": 1, "id": 9, "caption": "A cat on a mat."}],
                }
            ).encode(),
            "annotations/captions_train2017.json": b'{"images": [], "annotations": []}',
        }
    )
    val = make_zip({"val2017/000000000001.jpg": b"\xff\xd8jpeg" * 5000})
    server.files = {"/annotations/annotations_trainval2017.zip": ann, "/zips/val2017.zip": val}
    sums = {
        "annotations_trainval2017.zip": hashlib.md5(ann).hexdigest(),
        "val2017.zip": hashlib.md5(val).hexdigest(),
    }
    path = tmp_path / "sums.json"
    path.write_text(json.dumps(sums))
    yield server, path
    server.httpd.shutdown()


def test_full_download_layout_and_second_run_is_a_noop(coco_mirror, tmp_path, capsys):
    server, sums = coco_mirror
    dest = tmp_path / "coco"
    code = cli(
        [
            "download",
            "coco",
            "--dest",
            str(dest),
            "--splits",
            "val",
            "--base-url",
            server.url,
            "--checksums",
            str(sums),
        ]
    )
    assert code == 0
    assert (dest / "annotations" / "captions_val2017.json").is_file()
    assert (dest / "images" / "val2017" / "000000000001.jpg").is_file()
    from captioner.data.datasets import load_dataset

    recs = load_dataset("coco", dest, "val")
    assert recs[0].captions == ("A cat on a mat.",)
    assert "needs about" in capsys.readouterr().out
    server.requests.clear()
    assert download_coco(dest, ("val",), base_url=server.url, checksums=sums) == []
    assert server.requests == []  # nothing fetched, not even a HEAD


def test_interrupted_download_resumes_with_range(coco_mirror, tmp_path):
    server, sums = coco_mirror
    server.cut["/zips/val2017.zip"] = 10_000  # the first GET of the images stops early
    with pytest.raises(DownloadError, match="run again to resume|expected"):
        download_coco(tmp_path, ("val",), base_url=server.url, checksums=sums, progress=False)
    assert ("GET", None) in server.requests
    server.requests.clear()
    assert download_coco(tmp_path, ("val",), base_url=server.url, checksums=sums, progress=False)
    assert ("GET", "bytes=10000-") in server.requests  # continued, not restarted
    assert (tmp_path / "images" / "val2017" / "000000000001.jpg").is_file()


def test_corrupt_archive_is_detected_and_deleted(coco_mirror, tmp_path):
    server, sums = coco_mirror
    bad = json.loads(sums.read_text())
    bad["val2017.zip"] = "0" * 32
    sums.write_text(json.dumps(bad))
    with pytest.raises(DownloadError, match="val2017.zip: checksum mismatch.*run again"):
        download_coco(tmp_path, ("val",), base_url=server.url, checksums=sums, progress=False)
    assert not (tmp_path / ".download" / "val2017.zip.part").exists()
    assert not (tmp_path / "images" / "val2017").exists()


@pytest.mark.parametrize("entry", ["../evil.txt", "/etc/evil.txt", "images/../../evil.txt"])
def test_malicious_zip_entries_are_refused(tmp_path, entry):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(make_zip({entry: b"x"}))
    with pytest.raises(DownloadError, match="refusing unsafe entry"):
        download.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_symlink_entries_are_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        z.writestr(info, "/etc/passwd")
    (tmp_path / "l.zip").write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="symbolic link"):
        download.safe_extract(tmp_path / "l.zip", tmp_path / "out")


def test_not_enough_disk_is_an_error_before_downloading(coco_mirror, tmp_path, monkeypatch):
    server, sums = coco_mirror
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(DownloadError, match="not enough disk space.*needs about"):
        download_coco(tmp_path, ("val",), base_url=server.url, checksums=sums, progress=False)
    assert all(method == "HEAD" for method, _ in server.requests)


def test_unreachable_host_says_what_to_do(tmp_path):
    with pytest.raises(DownloadError, match="cannot reach.*--base-url"):
        download_coco(tmp_path, ("val",), base_url="http://127.0.0.1:9", progress=False)
