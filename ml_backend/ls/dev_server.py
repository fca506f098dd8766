"""Local servers: a real Label Studio (from .venv-ls) and the backend on 127.0.0.1, for the
demo, the benchmarks and the integration tests. Context managers: both stop on exit. Not used
by the deployed backend."""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]  # the checkout: .venv-ls and `python -m ml_backend` live here
LS_VENV = Path(os.environ.get("LS_VENV", ROOT / ".venv-ls"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: server exited with {proc.returncode} before answering\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class LabelStudioServer:
    """``with LabelStudioServer() as ls: ls.url, ls.token, ls.username, ls.password``.

    Listens on 127.0.0.1 only. ``ls.token`` is a legacy token by default (the integration tests
    exercise both kinds); with ``legacy_token=False`` it is a new personal access token (a JWT
    refresh token) and the organization refuses legacy tokens. The password is random per data
    dir; data_dir/token.json (mode 0600) keeps it and the token, so a reused data dir keeps its
    admin."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None, files_root: Path | None = None,
                 startup_timeout: float = 240, legacy_token: bool = True) -> None:
        self.port = port or free_port()
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ls-data-"))
        self.files_root = Path(files_root or self.data_dir)
        self.url = f"http://127.0.0.1:{self.port}"
        self.username, self.password = "admin@example.com", secrets.token_urlsafe(16)
        self.token = secrets.token_hex(20)
        self.legacy_token = legacy_token
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir / "label-studio.log"

    def __enter__(self) -> "LabelStudioServer":
        binary = LS_VENV / "bin" / "label-studio"
        if not binary.exists():
            raise FileNotFoundError(f"{binary} missing: run scripts/setup first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token_file = self.data_dir / "token.json"
        if token_file.exists():  # a reused data dir (demo restarts) keeps its admin: same password
            saved = json.loads(token_file.read_text())
            self.token, self.password = saved["token"], saved["password"]
        self._save(token_file)  # before the first start creates the admin with this password
        env = {**os.environ, "LABEL_STUDIO_USERNAME": self.username, "LABEL_STUDIO_PASSWORD": self.password,
               "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
               "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
               "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(self.files_root),
               "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
               "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false"}
        if self.legacy_token:  # the admin's legacy token is ours, and the new organization accepts it
            env.update(LABEL_STUDIO_USER_TOKEN=self.token, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true")
        # --host only names the server in generated URLs; --internal-host is the bind address
        # (Label Studio's default is 0.0.0.0: every interface).
        command = [str(binary), "start", "--no-browser", "--host", "127.0.0.1", "--internal-host", "127.0.0.1",
                   "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_http(f"{self.url}/health", self.startup_timeout, self.proc, self.log)
            if not self.legacy_token:
                self.token = self._personal_access_token()
                self._save(token_file)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def _save(self, token_file: Path) -> None:
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also for a file an older version wrote world-readable
        with os.fdopen(fd, "w") as out:
            json.dump({"token": self.token, "password": self.password}, out)

    def _personal_access_token(self) -> str:
        """Log in as the admin like a browser (session cookie + CSRF token), turn legacy tokens
        off for the organization (also one a reused data dir had) and make a new personal access
        token. Label Studio allows one per user and shows it only once, so older ones are revoked."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def csrf() -> str:
            return next(cookie.value for cookie in jar if cookie.name == "csrftoken")

        opener.open(f"{self.url}/user/login/", timeout=30).close()
        form = {"email": self.username, "password": self.password, "csrfmiddlewaretoken": csrf()}
        opener.open(f"{self.url}/user/login/", urllib.parse.urlencode(form).encode(), timeout=30).close()
        if not any(cookie.name == "sessionid" for cookie in jar):
            raise RuntimeError(f"could not log in to {self.url} as {self.username}: wrong password in token.json?")

        def api(method: str, path: str, body: dict | None = None):
            request = urllib.request.Request(
                f"{self.url}{path}", None if body is None else json.dumps(body).encode(), method=method,
                headers={"Content-Type": "application/json", "X-CSRFToken": csrf()})
            with opener.open(request, timeout=30) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None

        api("POST", "/api/jwt/settings", {"api_tokens_enabled": True, "legacy_api_tokens_enabled": False})
        for old in api("GET", "/api/token/"):
            api("POST", "/api/token/blacklist/", {"refresh": old["token"]})
        return api("POST", "/api/token/")["token"]


GUNICORN_OPTIONS = ("--workers", "1", "--threads", "8", "--timeout", "120")  # as the Dockerfile runs it


@contextlib.contextmanager
def start_backend(settings, *, extra_env: dict[str, str] | None = None, server: str = "serve") -> Iterator[str]:
    """Run the backend with ``settings``: ``python -m ml_backend serve``, or with ``server='gunicorn'``
    gunicorn as the Docker image runs it; yields its URL. The guards and the job queue come from
    ``settings`` too, not from the caller's shell (an operator's exported BASIC_AUTH_* or
    REDIS_URL would leave the demo's backend unreachable, or its jobs waiting for a worker)."""
    env = {**os.environ, "LABEL_STUDIO_URL": settings.label_studio_url,
           "LABEL_STUDIO_API_KEY": settings.label_studio_api_key, "MODEL_DIR": settings.model_dir,
           "PORT": str(settings.port), "HOST": "127.0.0.1", "BACKEND_PUBLIC_URL": settings.backend_url,
           "REDIS_URL": settings.redis_url, "BASIC_AUTH_USER": settings.basic_auth_user,
           "BASIC_AUTH_PASS": settings.basic_auth_pass, "WEBHOOK_SECRET": settings.webhook_secret,
           **(extra_env or {})}
    Path(settings.model_dir).mkdir(parents=True, exist_ok=True)
    log = Path(settings.model_dir) / "backend.log"
    with open(log, "ab") as out:
        command = (["-m", "ml_backend", "serve"] if server == "serve" else
                   ["-m", "gunicorn", "--bind", f"127.0.0.1:{settings.port}", *GUNICORN_OPTIONS,
                    "ml_backend.service:app_from_env()"])
        proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_http(f"{url}/health", 60, proc, log)
        yield url
    finally:
        _stop(proc)


def wait_for_job(backend_url: str, project_id: int, timeout: float = 1800,
                 on_progress: Callable[[dict], None] | None = None) -> dict:
    """Poll the backend's job status until the project's analysis has finished; ``on_progress``
    gets each polled state (once a second)."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{backend_url}/jobs/{project_id}", timeout=5) as resp:
                job = json.loads(resp.read())
        except OSError:
            job = {}
        if job.get("status") in ("done", "failed", "interrupted") and not job.get("requested_again"):
            return job
        if on_progress and job:
            on_progress(job)
        time.sleep(1)
    raise TimeoutError(f"analysis of project {project_id} not finished after {timeout:.0f} s: {job}")
