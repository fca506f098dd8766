"""Stand-ins for the analysis (module level, so an RQ worker can import them by path), a
controllable slow analysis for the in-process runner, and a private redis-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest
from redis import Redis

from ml_backend.config import Settings
from ml_backend.errors import DatasetError
from tests.components import missing

# --- analysis stand-ins an RQ worker imports as "tests.service.conftest:<name>" --------------------
RQ_CALLS: list[tuple[int, str]] = []


def analyze_ok(project_id, settings, progress):
    RQ_CALLS.append((project_id, settings.label_studio_api_key))
    progress("train", 1, 2)
    progress("train", 2, 2)
    return f"deconfusion-rq-{project_id}-{len(RQ_CALLS)}"


def analyze_fails(project_id, settings, progress):
    RQ_CALLS.append((project_id, settings.label_studio_api_key))
    raise DatasetError("only one class is labeled; label at least two classes")


def analyze_hangs(project_id, settings, progress):
    """Reports progress, then works on for minutes: a job to kill its worker under."""
    progress("train", 1, 10)
    time.sleep(600)
    return "never"


# --- in-process analysis you can hold and release -------------------------------------------------
class SlowAnalysis:
    """analyze_fn that records its calls and waits for ``release()`` (or ``timeout`` s) before
    returning ``deconfusion-v<n>``; projects in ``fail`` raise instead."""

    def __init__(self, fail: dict[int, Exception] | None = None, timeout: float = 10.0) -> None:
        self.calls: list[int] = []
        self.fail = fail or {}
        self.timeout = timeout
        self.started = threading.Event()
        self._gate = threading.Event()
        self._lock = threading.Lock()

    def release(self) -> None:
        self._gate.set()

    def __call__(self, project_id, settings, progress):
        with self._lock:
            self.calls.append(project_id)
            n = len(self.calls)
        progress("download", 0, 4)
        self.started.set()
        self._gate.wait(self.timeout)
        progress("download", 4, 4)
        if project_id in self.fail:
            raise self.fail[project_id]
        return f"deconfusion-v{n}"


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings.from_env({}, model_dir=str(tmp_path / "model_dir"))


@pytest.fixture()
def slow() -> SlowAnalysis:
    analysis = SlowAnalysis()
    yield analysis
    analysis.release()  # never leave a runner thread waiting


# --- a private redis-server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def redis_url(tmp_path):
    """A redis-server of our own on a free port; without Debian's redis-server the test skips
    (fails under CI=true)."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server", "apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        if not wait_until(lambda: _pings(url), timeout=10):
            pytest.fail(f"redis-server did not start on port {port}")
        RQ_CALLS.clear()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except Exception:
        return False
