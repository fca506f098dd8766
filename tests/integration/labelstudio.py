"""Test harness for a real Label Studio: start one, get tokens of both kinds, act in it as a user
would (annotate, upload, list a tab), and host images on another origin that records what it was
sent. Standard library only (plus Pillow for PNGs) besides the client under test.

The server itself is ``ml_backend.ls.dev_server``'s LabelStudioServer (also used by the demo and
the benchmarks): Label Studio 1.23 from ``$LS_VENV`` (default ``.venv-ls``) on 127.0.0.1 and a free
port, a fresh data dir, an admin user with a 40-hex legacy token, legacy tokens enabled for the
organization (LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN; 1.23 turns them off for new organizations),
local-file serving on, SSRF protection and the ML local-IP block off. The first start migrates a
new SQLite database: about 50 s here.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ml_backend.ls.client import LabelStudioClient
from ml_backend.ls.dev_server import LS_VENV, ROOT, LabelStudioServer, free_port

__all__ = ["LS_VENV", "ROOT", "LabelStudioServer", "free_port", "ls_installed", "running_label_studio",
           "create_personal_access_token", "revoke_personal_access_tokens", "whoami", "create_annotation",
           "upload_images", "view_task_ids", "ImageHost", "Route", "png_bytes", "LOOPBACK"]

LOOPBACK = "127.0.0.1"  # DOWNLOAD_ALLOW for test image hosts, which the download policy refuses by default


def ls_installed() -> bool:
    return (LS_VENV / "bin" / "label-studio").exists()


@contextlib.contextmanager
def running_label_studio(data_dir: Path, *, files_root: Path | None = None) -> Iterator[LabelStudioServer]:
    """A started Label Studio (``.url``, ``.token`` the legacy token, ``.files`` the local-files
    root); stopped, with its process group, on exit."""
    files = Path(files_root or data_dir / "files")
    files.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with LabelStudioServer(data_dir=data_dir, files_root=files) as server:
        server.files = files
        server.start_seconds = time.monotonic() - started
        yield server


def _call(url: str, method: str, token: str, body: dict | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def revoke_personal_access_tokens(url: str, legacy_token: str) -> int:
    """Blacklist the user's personal access tokens (Label Studio lists them truncated, which
    is enough to blacklist); returns how many."""
    status, tokens = _call(f"{url}/api/token/", "GET", legacy_token)
    if status != 200:
        raise RuntimeError(f"GET /api/token/ answered {status}: {tokens}")
    for item in tokens:
        _call(f"{url}/api/token/blacklist/", "POST", legacy_token, {"refresh": item["token"]})
    return len(tokens)


def create_personal_access_token(url: str, legacy_token: str) -> str:
    """A new personal access token (JWT refresh token) for the legacy token's user. Label Studio
    allows one per user, so an existing one is revoked first."""
    status, body = _call(f"{url}/api/token/", "POST", legacy_token)
    if status == 409:
        revoke_personal_access_tokens(url, legacy_token)
        status, body = _call(f"{url}/api/token/", "POST", legacy_token)
    if status != 201:
        raise RuntimeError(f"POST /api/token/ answered {status}: {body}")
    return body["token"]


def whoami(client: LabelStudioClient) -> dict:
    """The token's user (id, email, ...): the cheapest call that needs a valid URL and token."""
    return client.request("GET", "/api/current-user/whoami")


def create_annotation(client: LabelStudioClient, task_id: int, result: list[dict], *,
                      was_cancelled: bool = False, completed_by: int | None = None) -> int:
    """What a reviewer's Submit (or Skip, ``was_cancelled``) does; returns the annotation id.
    ``completed_by``: another user of the organization made it (the token's user by default)."""
    body = {"result": result, "was_cancelled": bool(was_cancelled)}
    if completed_by is not None:
        body["completed_by"] = int(completed_by)
    return int(client.request("POST", f"/api/tasks/{int(task_id)}/annotations/", json=body)["id"])


def create_user(client: LabelStudioClient, email: str) -> int:
    """A second member of the organization (what an admin's invite ends in); returns its id."""
    body = {"email": email, "username": email.split("@")[0], "password": "annotator-pass-1"}
    return int(client.request("POST", "/api/users/", json=body)["id"])


def upload_images(client: LabelStudioClient, project_id: int, files: list[tuple[str, bytes]]) -> list[int]:
    """Upload ``(name, PNG bytes)`` files as the import dialog does: one task per file, with data
    ``{<image key>: "/data/upload/<project>/<name>"}``. Returns the task ids."""
    parts = {f"file{n}": (name, body, "image/png") for n, (name, body) in enumerate(files)}
    answer = client.request("POST", f"/api/projects/{int(project_id)}/import", files=parts,
                            params={"commit_to_project": "true", "return_task_ids": "true"}, timeout=600)
    return [int(t) for t in answer["task_ids"]]


def view_task_ids(client: LabelStudioClient, project_id: int, view_id: int) -> list[int]:
    """Task ids in the tab, filtered and in the tab's order (as the Data Manager lists them)."""
    params = {"project": int(project_id), "view": int(view_id), "fields": "task_only"}
    return [int(t["id"]) for t in client.paged_tasks(params)]


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Route:
    status: int = 200
    content_type: str = "image/png"
    body: bytes = b""
    delay: float = 0.0  # seconds before the body: a slow host
    trickle: float = 0.0  # seconds between the body's bytes, sent one at a time: no read ever times out
    location: str = ""  # set with a 3xx status: a redirect
    cookie: str = ""  # a Set-Cookie header, as Label Studio sends csrftoken/sessionid
    etag: str = ""  # an ETag header; a request with If-None-Match: <etag> then gets 304 and no body


@dataclass
class ImageHost:
    """Another origin (127.0.0.1, its own port) serving ``routes`` to GET and POST; ``seen`` keeps
    (path, headers) of every request, ``posts`` (path, body) of POSTs.
    ``with ImageHost(routes) as host: host.url + "/a.png"``. A loopback address: image downloads
    reach it only with Settings(download_allow=LOOPBACK)."""

    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    posts: list[tuple[str, bytes]] = field(default_factory=list)

    def __enter__(self) -> "ImageHost":
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                host.posts.append((self.path, body))
                self.do_GET()

            def do_GET(self):
                host.seen.append((self.path, dict(self.headers)))
                route = host.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.delay:
                    time.sleep(route.delay)
                if route.etag and self.headers.get("If-None-Match") == route.etag:
                    self.send_response(304)
                    self.send_header("ETag", route.etag)
                    self.end_headers()
                    return
                self.send_response(route.status)
                if route.etag:
                    self.send_header("ETag", route.etag)
                if route.location:
                    self.send_header("Location", route.location)
                if route.cookie:
                    self.send_header("Set-Cookie", route.cookie)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                try:
                    step = 1 if route.trickle else max(len(route.body), 1)
                    for start in range(0, len(route.body), step):
                        self.wfile.write(route.body[start:start + step])
                        time.sleep(route.trickle)
                except OSError:  # the client gave up (timeout, size limit)
                    pass

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests_for(self, path: str) -> list[dict[str, str]]:
        return [headers for p, headers in self.seen if p == path]
