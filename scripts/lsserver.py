"""Start a real Label Studio (from .venv-ls) and the backend on 127.0.0.1, for the demo,
the service benchmark and the integration tests. Context managers: both stop on exit."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
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
    """``with LabelStudioServer() as ls: ls.url, ls.token`` (a legacy token), ls.username/password."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None, files_root: Path | None = None,
                 startup_timeout: float = 240) -> None:
        self.port = port or free_port()
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ls-data-"))
        self.files_root = Path(files_root or self.data_dir)
        self.url = f"http://127.0.0.1:{self.port}"
        self.username, self.password = "admin@example.com", "deconfusion-demo"
        self.token = secrets.token_hex(20)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir / "label-studio.log"

    def __enter__(self) -> "LabelStudioServer":
        binary = LS_VENV / "bin" / "label-studio"
        if not binary.exists():
            raise FileNotFoundError(f"{binary} missing: run scripts/setup first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        token_file = self.data_dir / "token.json"
        if token_file.exists():  # a data dir reused (demo restarts) keeps its first user and token
            saved = json.loads(token_file.read_text())
            self.token, self.password = saved["token"], saved["password"]
        token_file.write_text(json.dumps({"token": self.token, "password": self.password}))
        env = {**os.environ, "LABEL_STUDIO_USERNAME": self.username, "LABEL_STUDIO_PASSWORD": self.password,
               "LABEL_STUDIO_USER_TOKEN": self.token, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
               "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
               "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
               "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(self.files_root),
               "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
               "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"{self.url}/health", self.startup_timeout, self.proc, self.log)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@contextlib.contextmanager
def start_backend(settings, *, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``python -m ml_backend serve`` with ``settings``; yields its URL."""
    env = {**os.environ, "LABEL_STUDIO_URL": settings.label_studio_url,
           "LABEL_STUDIO_API_KEY": settings.label_studio_api_key, "MODEL_DIR": settings.model_dir,
           "PORT": str(settings.port), "HOST": "127.0.0.1", "BACKEND_PUBLIC_URL": settings.backend_url,
           **(extra_env or {})}
    Path(settings.model_dir).mkdir(parents=True, exist_ok=True)
    log = Path(settings.model_dir) / "backend.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ml_backend", "serve"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_http(f"{url}/health", 60, proc, log)
        yield url
    finally:
        _stop(proc)


def wait_for_job(backend_url: str, project_id: int, timeout: float = 1800) -> dict:
    """Poll the backend's job status until the project's analysis has finished."""
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
        time.sleep(1)
    raise TimeoutError(f"analysis of project {project_id} not finished after {timeout:.0f} s: {job}")
