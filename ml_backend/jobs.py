"""Analysis jobs: state on disk, and two runners with the same behaviour.

- ``LocalRunner`` (default): a background thread in the backend process.
- ``RQRunner`` (with REDIS_URL): jobs on an RQ queue; ``rq worker`` processes on other
  machines sharing MODEL_DIR run them.

Both run at most one analysis per project; presses during a run are coalesced into one
follow-up run. State lives in ``MODEL_DIR/projects/<id>/job.json``, so it survives restarts;
a job a dead process left running is reported as interrupted.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Callable

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from .config import Settings
from .errors import DeConfusionError
from .store import read_json, write_json

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
AnalyzeFn = Callable[[int, Settings, ProgressFn], str]
WRITE_EVERY_S = 1.0
LOG_EVERY_S = 10.0
REDIS_RETRIES = (0.5, 1.0, 2.0)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class JobQueueUnavailable(DeConfusionError):
    """Redis did not answer after retries."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def job_path(settings: Settings, project_id: int) -> Path:
    return Path(settings.model_dir) / "projects" / str(int(project_id)) / "job.json"


def read_job(settings: Settings, project_id: int) -> dict | None:
    return read_json(job_path(settings, project_id), None)


def update_job(settings: Settings, project_id: int, **fields) -> dict:
    job = {**(read_job(settings, project_id) or {"project": int(project_id)}), **fields}
    write_json(job_path(settings, project_id), job)
    return job


def mark_interrupted(settings: Settings) -> list[int]:
    """Jobs that a previous process left queued or running cannot finish: say so."""
    found = []
    for path in (Path(settings.model_dir) / "projects").glob("*/job.json"):
        job = read_json(path, {})
        if job.get("status") in (JobStatus.QUEUED, JobStatus.RUNNING) and not settings.redis_url:
            job.update(status=JobStatus.INTERRUPTED.value, finished_at=_now(),
                       message="the backend stopped while this analysis ran; press Start Training to run it again")
            write_json(path, job)
            found.append(int(job.get("project", path.parent.name)))
    return found


class ProgressWriter:
    """progress(stage, done, total) -> job.json (at most once a second) and a log line with ETA."""

    def __init__(self, settings: Settings, project_id: int) -> None:
        self.settings, self.project_id = settings, project_id
        self.stage, self.stage_start, self.last_write, self.last_log = "", 0.0, 0.0, 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.stage_start, self.last_write = stage, now, 0.0
        rate = done / max(now - self.stage_start, 1e-9)
        eta = round((total - done) / rate, 1) if rate > 0 and total else None
        if now - self.last_write >= WRITE_EVERY_S or done >= total:
            self.last_write = now
            update_job(self.settings, self.project_id, stage=stage, done=done, total=total, eta_seconds=eta)
        if now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            log.info("project %s: %s %d/%d, ETA %s s", self.project_id, stage, done, total, eta)


def execute(project_id: int, settings: Settings, analyze_fn: AnalyzeFn) -> dict:
    """Run one analysis and record how it ended; never raises."""
    update_job(settings, project_id, status=JobStatus.RUNNING.value, started_at=_now(), finished_at=None,
               message="", stage="starting", done=0, total=0, eta_seconds=None)
    try:
        version = analyze_fn(project_id, settings, ProgressWriter(settings, project_id))
    except Exception as exc:  # any failure becomes a readable status; the service stays up
        message = str(exc) if isinstance(exc, DeConfusionError) else f"{type(exc).__name__}: {exc}"
        log.exception("project %s: analysis failed", project_id)
        return update_job(settings, project_id, status=JobStatus.FAILED.value, finished_at=_now(), message=message)
    return update_job(settings, project_id, status=JobStatus.DONE.value, finished_at=_now(), model_version=version,
                      message=f"analysis {version} published", stage="done")


def resolve(path: str) -> AnalyzeFn:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class LocalRunner:
    """A background thread per busy project."""

    def __init__(self, settings: Settings, analyze_fn: AnalyzeFn) -> None:
        self.settings, self.analyze_fn = settings, analyze_fn
        self._lock = threading.Lock()
        self._threads: dict[int, threading.Thread] = {}
        self._again: set[int] = set()

    def submit(self, project_id: int) -> dict:
        project_id = int(project_id)
        with self._lock:
            if project_id in self._threads:
                self._again.add(project_id)
                return update_job(self.settings, project_id, requested_again=True)
            job = update_job(self.settings, project_id, status=JobStatus.QUEUED.value, requested_again=False,
                             queued_at=_now())
            thread = threading.Thread(target=self._run, args=(project_id,), name=f"analysis-{project_id}", daemon=True)
            self._threads[project_id] = thread
            thread.start()
            return job

    def _run(self, project_id: int) -> None:
        while True:
            execute(project_id, self.settings, self.analyze_fn)
            with self._lock:
                if project_id not in self._again:
                    del self._threads[project_id]
                    return
                self._again.discard(project_id)
                update_job(self.settings, project_id, requested_again=False)

    def status(self, project_id: int) -> dict | None:
        return read_job(self.settings, project_id)

    def wait(self, project_id: int, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                thread = self._threads.get(int(project_id))
            if thread is None:
                return self.status(project_id)
            thread.join(timeout=0.1)
        raise TimeoutError(f"analysis of project {project_id} still running after {timeout} s")


def _with_redis_retries(action: Callable[[], object], what: str):
    for delay in (*REDIS_RETRIES, None):
        try:
            return action()
        except RedisError as exc:
            if delay is None:
                raise JobQueueUnavailable(f"Redis did not answer while {what} ({exc}); check REDIS_URL and that "
                                          "Redis is running") from None
            time.sleep(delay)


def _keys(project_id: int) -> tuple[str, str]:
    return f"deconfusion:{project_id}:active", f"deconfusion:{project_id}:again"


def run_analysis_job(project_id: int, settings_dict: dict, analyze_fn_path: str) -> dict:
    """RQ job function (module level, so workers can import it)."""
    settings = Settings(**settings_dict)
    redis = Redis.from_url(settings.redis_url)
    active, again = _keys(project_id)
    while True:
        job = execute(project_id, settings, resolve(analyze_fn_path))
        if not _with_redis_retries(lambda: redis.getdel(again), "checking for a follow-up run"):
            _with_redis_retries(lambda: redis.delete(active), "releasing the project")
            return job
        update_job(settings, project_id, requested_again=False)


class RQRunner:
    def __init__(self, settings: Settings, analyze_fn_path: str) -> None:
        self.settings, self.analyze_fn_path = settings, analyze_fn_path
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.queue = Queue(settings.queue_name, connection=self.redis)

    def submit(self, project_id: int) -> dict:
        project_id = int(project_id)
        active, again = _keys(project_id)
        if not _with_redis_retries(lambda: self.redis.set(active, 1, nx=True, ex=24 * 3600), "queueing the analysis"):
            _with_redis_retries(lambda: self.redis.set(again, 1), "queueing a follow-up analysis")
            return update_job(self.settings, project_id, requested_again=True)
        job = update_job(self.settings, project_id, status=JobStatus.QUEUED.value, requested_again=False,
                         queued_at=_now())
        settings_dict = {f: getattr(self.settings, f) for f in self.settings.__dataclass_fields__}
        _with_redis_retries(lambda: self.queue.enqueue(run_analysis_job, project_id, settings_dict,
                                                       self.analyze_fn_path, job_timeout=24 * 3600),
                            "queueing the analysis")
        return job

    def status(self, project_id: int) -> dict | None:
        return read_job(self.settings, project_id)


def make_runner(settings: Settings, analyze_fn_path: str):
    if settings.redis_url:
        return RQRunner(settings, analyze_fn_path)
    return LocalRunner(settings, resolve(analyze_fn_path))
