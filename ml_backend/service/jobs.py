"""Analysis jobs: their state on disk (``MODEL_DIR/projects/<id>/job.json``, :class:`JobState`),
the per-project lock, and running one analysis with its progress (:func:`execute`). The runners
that schedule jobs are in :mod:`.runners`.

What the analysis does is injected: ``analyze_fn(project_id, settings, progress) -> model_version``
(:data:`AnalyzeFn`). It raises on failure; the job records the message, never a traceback, and
the service keeps running.

A job that a dead process left queued or running is reported ``interrupted``: the OS drops a dead
process's file lock, so an unlocked ``running`` job has no runner left (:func:`recover_interrupted`
at start-up, :func:`local_status` on every status read).

File locks need POSIX ``fcntl.flock`` (Linux, macOS), on a local disk or a file system that
supports them.
"""


from __future__ import annotations

import fcntl
import importlib
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Protocol, TypedDict


from ..config import Settings
from ..errors import DeConfusionError
from ..store import read_json, write_json
from ..vocabulary import Progress

log = logging.getLogger(__name__)

AnalyzeFn = Callable[[int, Settings, Progress], str]
"""analyze_fn(project_id, settings, progress) -> model_version; raises on failure."""

WRITE_EVERY_S = 1.0
"""Progress is written to job.json at most this often, in seconds (and at each stage change)."""
LOG_EVERY_S = 10.0
"""Progress is logged at most this often, in seconds (and at each stage change)."""

ANALYSIS_MESSAGE = "analysis running"
# Publishing's later stages (publish.publish_analysis) start once the tabs and the overview are up;
# each says where it is.
REVIEW_READY = "review can start: the review tabs and the overview are up in Label Studio and the review queue's " \
               "first tasks are final; "
STAGE_MESSAGES = {
    "queue": REVIEW_READY + "the rest of the queue follows in rank order, then the other tasks' fields and predictions",
    "more fields": REVIEW_READY + "the whole queue is final; the other flagged tasks' fields and the predictions follow",
    "predictions": REVIEW_READY + "every flagged task is final; the other tasks' predictions follow",
    "old predictions": REVIEW_READY + "every task has this version's prediction; older versions' predictions are "
                       "being removed",
}
RESTART_HINT = "press Start Training to run it again"


class JobStatus(str, Enum):
    """Where a project's analysis job is; stored as its string value in job.json."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class JobState(TypedDict, total=False):
    """The content of ``job.json`` (times are ISO 8601 UTC strings)."""

    project_id: int
    status: str                  # a JobStatus value
    stage: str | None            # current pipeline stage, e.g. "download", "train"
    done: int                    # items of the stage done ...
    total: int                   # ... out of this many
    eta_seconds: float | None    # estimated seconds left in the stage; None when unknown
    message: str                 # one readable sentence: what happened or what to do
    model_version: str | None    # version the last finished analysis published
    requested_again: bool        # a follow-up run is requested (presses during this run)
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    updated_at: str
    duration_seconds: float | None
    runner: str                  # "local" | "rq"
    rq_job_id: str | None        # RQ job id when runner is "rq"
    worker: str | None           # host:pid that runs or ran the analysis
    queue_error: str             # set by RQRunner.status when Redis did not answer
    warning: str | None          # something the finished job could not do, and what will do it


class JobQueueUnavailable(DeConfusionError):
    """The job queue (Redis) did not answer after retries, or the runner is shutting down."""


class JobRunner(Protocol):
    def submit(self, project_id: int) -> JobState: ...

    def status(self, project_id: int) -> JobState | None: ...


# --- state on disk ---------------------------------------------------------------------------

def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def age_seconds(stamp: str | None) -> float:
    try:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(str(stamp))).total_seconds()
    except ValueError:
        return float("inf")


def check_project_id(project_id: Any) -> int:
    """A Label Studio project id: a positive int (bools and other kinds raise)."""
    if isinstance(project_id, bool) or not isinstance(project_id, (int, str)):
        raise TypeError(f"project_id must be an int, got {type(project_id).__name__} {project_id!r}")
    try:
        value = int(project_id)
    except ValueError:
        raise ValueError(f"project_id must be a positive integer, got {project_id!r}") from None
    if value <= 0:
        raise ValueError(f"project_id must be a positive integer, got {project_id!r}")
    return value


def _project_dir(settings: Settings, project_id: int) -> Path:
    return Path(settings.model_dir) / "projects" / str(int(project_id))


def job_path(settings: Settings, project_id: int) -> Path:
    return _project_dir(settings, project_id) / "job.json"


def lock_path(settings: Settings, project_id: int) -> Path:
    return _project_dir(settings, project_id) / "job.lock"


def again_path(settings: Settings, project_id: int) -> Path:
    return _project_dir(settings, project_id) / "job.again"


def read_job(settings: Settings, project_id: int) -> JobState | None:
    """job.json as written, or None when the project never had a job."""
    path = job_path(settings, project_id)
    try:
        job = read_json(path, None)
    except (ValueError, OSError) as exc:  # atomic writes make this unlikely; never fail a status read
        log.warning("project %s: unreadable %s (%s); treating as no job", project_id, path, exc)
        return None
    return job if isinstance(job, dict) else None


def update_job(settings: Settings, project_id: int, **fields: Any) -> JobState:
    """Merge ``fields`` into job.json (atomic write). Only the project's owner calls this."""
    job = {**(read_job(settings, project_id) or {}), **fields,
           "project_id": int(project_id), "updated_at": now()}
    write_json(job_path(settings, project_id), job)
    return job


def list_jobs(settings: Settings) -> dict[int, JobState]:
    """Every project's job.json under MODEL_DIR, as written (no reconciliation)."""
    jobs = {}
    for path in sorted((Path(settings.model_dir) / "projects").glob("*/job.json")):
        if path.parent.name.isdigit():
            job = read_job(settings, int(path.parent.name))
            if job is not None:
                jobs[int(path.parent.name)] = job
    return jobs


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def describe(exc: BaseException) -> str:
    """Our errors carry a readable message; others get their type named too. Never a traceback."""
    text = str(exc).strip()
    if isinstance(exc, DeConfusionError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def mark_interrupted(settings: Settings, project_id: int, job: JobState, why: str) -> JobState:
    stage = job.get("stage")
    where = f" (stage {stage}, {job.get('done', 0)}/{job.get('total', 0)})" if stage else ""
    return update_job(settings, project_id, status=JobStatus.INTERRUPTED.value, finished_at=now(), eta_seconds=None,
                      message=f"{why} while this analysis was {job.get('status')}{where}; {RESTART_HINT}")


# --- project locks (local runner) ------------------------------------------------------------

class ProjectLock:
    """An exclusive ``flock`` on ``job.lock``; the OS drops it when its process dies."""

    def __init__(self, handle) -> None:
        self._handle = handle

    @classmethod
    def acquire(cls, path: Path, wait_s: float = 0.0) -> "ProjectLock | None":
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(handle)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    return None
                time.sleep(0.01)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def local_status(settings: Settings, project_id: int) -> JobState | None:
    """A local job's state as readers should see it.

    A queued or running job that no live process owns (its lock is free) is marked
    ``interrupted``; ``requested_again`` is true while an owner will serve a pending press.
    The lock is only tested (taken for a moment), so owners and submits are not held up.
    """
    job = read_job(settings, project_id)
    if job is None or job.get("runner") == "rq":
        return job
    again = again_path(settings, project_id).exists()
    if job.get("status") not in ACTIVE and not again:
        job["requested_again"] = False
        return job
    lock = ProjectLock.acquire(lock_path(settings, project_id))
    if lock is None:  # a live runner owns the project and will see the request
        job["requested_again"] = again
        return job
    try:
        job = read_job(settings, project_id) or job  # again, under the lock
        if job.get("status") in ACTIVE and job.get("runner") != "rq":
            job = mark_interrupted(settings, project_id, job, "the backend stopped")
            log.warning("project %s: %s", project_id, job["message"])
        job["requested_again"] = False  # no owner: a leftover request waits for the next press
        return job
    finally:
        lock.release()


def recover_interrupted(settings: Settings) -> list[int]:
    """At start-up: mark local jobs that a dead process left queued or running as interrupted.

    Cheap (one small file per project). Jobs some live process owns, and RQ jobs (checked by
    :meth:`RQRunner.status`), are left alone. Returns the project ids marked.
    """
    marked = []
    for project_id, job in list_jobs(settings).items():
        if job.get("status") in ACTIVE and job.get("runner") != "rq":
            after = local_status(settings, project_id)
            if after is not None and after.get("status") == JobStatus.INTERRUPTED.value:
                marked.append(project_id)
    return marked


# --- running one analysis ----------------------------------------------------------------------

class _Progress:
    """progress(stage, done, total) -> job.json (at most every WRITE_EVERY_S) and a log line with ETA
    (at most every LOG_EVERY_S). A failed write is logged, never raised into the analysis."""

    def __init__(self, settings: Settings, project_id: int) -> None:
        self.settings, self.project_id = settings, project_id
        self._lock = threading.Lock()
        self.stage: str | None = None
        self.stage_start = self.last_write = self.last_log = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            new_stage = stage != self.stage
            if new_stage:
                self.stage, self.stage_start = stage, now
            elapsed = now - self.stage_start
            eta = round((total - done) * elapsed / done, 1) if 0 < done < total and elapsed > 0 else None
            if new_stage or now - self.last_write >= WRITE_EVERY_S or 0 < total <= done:
                self.last_write = now
                try:
                    ready = {"message": STAGE_MESSAGES[stage]} if new_stage and stage in STAGE_MESSAGES else {}
                    update_job(self.settings, self.project_id, stage=stage, done=int(done), total=int(total),
                               eta_seconds=eta, **ready)
                except OSError as exc:
                    log.warning("project %s: could not record progress: %s", self.project_id, exc)
            if new_stage or now - self.last_log >= LOG_EVERY_S:
                self.last_log = now
                log.info("project %s: %s %d/%d, ETA %s", self.project_id, stage, done, total,
                         "unknown" if eta is None else f"{eta:.0f} s")


def execute(project_id: int, settings: Settings, analyze_fn: AnalyzeFn) -> JobState:
    """Run one analysis and record how it ended in job.json; never raises an analysis error."""
    started = time.monotonic()
    update_job(settings, project_id, status=JobStatus.RUNNING.value, started_at=now(), finished_at=None,
               duration_seconds=None, stage="starting", done=0, total=0, eta_seconds=None,
               message=ANALYSIS_MESSAGE, requested_again=False, worker=worker_name(), warning=None)
    previous = (read_job(settings, project_id) or {}).get("model_version")
    log.info("project %s: analysis started", project_id)
    try:
        version = analyze_fn(project_id, settings, _Progress(settings, project_id))
        if not isinstance(version, str) or not version:
            raise TypeError(f"the analysis function returned {version!r} instead of a model version string")
    except Exception as exc:  # any failure becomes a readable status; the service stays up
        log.exception("project %s: analysis failed", project_id)
        return update_job(settings, project_id, status=JobStatus.FAILED.value, finished_at=now(), eta_seconds=None,
                          duration_seconds=round(time.monotonic() - started, 3), message=describe(exc))
    log.info("project %s: analysis finished: %s", project_id, version)
    message = (f"nothing changed since model version {version} (same images, labels, verdicts and settings): "
               "it stays published" if version == previous else f"analysis finished: model version {version}")
    return update_job(settings, project_id, status=JobStatus.DONE.value, finished_at=now(), eta_seconds=None,
                      duration_seconds=round(time.monotonic() - started, 3), stage="done", model_version=version,
                      message=message)


def resolve(path: str) -> AnalyzeFn:
    """'package.module:function' -> the function."""
    module, sep, name = str(path).partition(":")
    if not sep or not module or not name:
        raise ValueError(f"analyze_fn_path must look like 'package.module:function', got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import the analysis function {path!r}: {exc}") from None


