"""Two job runners that behave the same.

- :class:`LocalRunner` (default): background threads in the backend process.
- :class:`RQRunner` (with ``REDIS_URL``): jobs on an RQ queue, run by ``rq`` workers that may sit
  on other machines sharing ``MODEL_DIR``; :func:`run_analysis_job` is the job function.

Per project, both runners

- run at most one analysis at a time: a project is *owned* by whoever holds its lock (an OS file
  lock on ``job.lock`` for the local runner, a Redis key for RQ), from queueing to the end;
- coalesce presses during a run into exactly one follow-up run: a press on an owned project only
  sets a flag (``job.again`` file, or a Redis key), and the owner runs once more if it is set;
- keep the state in ``job.json`` (:mod:`.jobs`), written atomically by the owner only.

An RQ job whose RQ job failed, stopped or vanished, or whose worker stopped beating (killed,
out of memory, machine lost), is reported ``interrupted``; the next Start Training takes over.
"""


from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, NamedTuple, TypeVar

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQJobStatus

from ..config import ENV_NAMES, MACHINE_SETTINGS, Settings
from ..errors import DeConfusionError
from .jobs import (ACTIVE, AnalyzeFn, JobQueueUnavailable, JobState, JobStatus, ProjectLock, age_seconds, again_path,
                   check_project_id, describe, execute, local_status, lock_path, mark_interrupted, now,
                   read_job, resolve, update_job, worker_name)

log = logging.getLogger(__name__)

LOCK_WAIT_S = 0.2
"""How long a submit waits for a project lock that a status check holds for a moment, in seconds."""
REDIS_RETRY_DELAYS_S = (0.5, 1.0, 2.0)
"""Pauses between attempts when Redis does not answer, in seconds; then the error is reported."""
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 5.0
JOB_TIMEOUT_S = 24 * 3600
"""Longest an RQ worker lets one analysis job (including its follow-up runs) take, in seconds."""
RESULT_TTL_S = 24 * 3600
"""How long Redis keeps a finished or failed RQ job, in seconds."""
ENQUEUE_GRACE_S = 60.0
"""An RQ job missing from Redis counts as lost only this long after it was queued, in seconds."""
HEARTBEAT_EVERY_S = 2.0
HEARTBEAT_TTL_S = 10.0
"""A worker running a project's job refreshes a Redis key every HEARTBEAT_EVERY_S seconds with
this lifetime; a started job without it has lost its worker."""
SECRET_SETTINGS = ("label_studio_api_key", "basic_auth_pass")
"""Settings never put into Redis: RQ workers take them from their own environment."""
WEB_ONLY_SECRETS = ("webhook_secret",)
"""Secrets a worker never uses: left out of Redis and not asked of the worker either."""


# --- local runner --------------------------------------------------------------------------------

class LocalRunner:
    """Analyses on background threads of this process.

    ``max_workers`` analyses run at once (default 1: one GPU or CPU pool is shared); other owned
    projects wait ``queued``. Presses on a project that is queued or running here, or in another
    process on the same machine (gunicorn workers), are coalesced into one follow-up run.
    """

    def __init__(self, settings: Settings, analyze_fn: AnalyzeFn, *, max_workers: int = 1) -> None:
        if not callable(analyze_fn):
            raise TypeError(f"analyze_fn must be callable, got {type(analyze_fn).__name__}")
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        self.settings, self.analyze_fn, self.max_workers = settings, analyze_fn, max_workers
        self._cv = threading.Condition()
        self._owned: dict[int, ProjectLock] = {}   # projects queued or running here
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, project_id: int) -> JobState:
        """Queue an analysis, or, if one is queued or running, request one follow-up run."""
        project_id = check_project_id(project_id)
        if self._closed:
            raise JobQueueUnavailable("the backend is shutting down; press Start Training again in a moment")
        # First the request, then the ownership test: an owner checks for requests after releasing.
        again = again_path(self.settings, project_id)
        again.parent.mkdir(parents=True, exist_ok=True)
        again.touch()
        with self._cv:
            owned_here = project_id in self._owned
        state = None if owned_here else self._claim(project_id, wait_s=LOCK_WAIT_S)
        if state is not None:
            return state
        log.info("project %s: analysis already queued or running; one follow-up run requested", project_id)
        return self.status(project_id)

    def _claim(self, project_id: int, wait_s: float) -> JobState | None:
        """Own the project and queue a run; None if someone else owns it."""
        lock = ProjectLock.acquire(lock_path(self.settings, project_id), wait_s)
        if lock is None:
            return None
        try:
            return self._enqueue_owned(project_id, lock, "queued; waiting for a free analysis worker")
        except BaseException:
            lock.release()
            raise

    def _enqueue_owned(self, project_id: int, lock: ProjectLock, message: str) -> JobState:
        # State first, then consume the request: a reader never sees "done" without a pending run.
        state = update_job(self.settings, project_id, status=JobStatus.QUEUED.value, queued_at=now(),
                           started_at=None, finished_at=None, duration_seconds=None, stage=None, done=0, total=0,
                           eta_seconds=None, message=message, requested_again=False, runner="local", rq_job_id=None)
        again_path(self.settings, project_id).unlink(missing_ok=True)
        with self._cv:
            self._owned[project_id] = lock
            while len(self._threads) < self.max_workers:
                thread = threading.Thread(target=self._work, name=f"deconfusion-analysis-{len(self._threads)}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
        self._queue.put(project_id)
        return state

    def _work(self) -> None:
        while True:
            project_id = self._queue.get()
            if project_id is None:
                return
            try:
                self._run_once(project_id)
            except Exception:  # a bug here must not kill the worker thread
                log.exception("project %s: job runner error", project_id)
                self._release(project_id)

    def _run_once(self, project_id: int) -> None:
        with self._cv:
            closed = self._closed
        if closed:
            job = read_job(self.settings, project_id) or {}
            mark_interrupted(self.settings, project_id, job, "the backend shut down")
            self._release(project_id)
            return
        execute(project_id, self.settings, self.analyze_fn)
        if again_path(self.settings, project_id).exists() and not self._closed:
            # Still owned: the follow-up goes to the back of the queue, so other projects get a turn.
            with self._cv:
                lock = self._owned[project_id]
            log.info("project %s: running the follow-up analysis requested during the last run", project_id)
            self._enqueue_owned(project_id, lock, "a follow-up analysis was requested during the last run; queued")
            return
        self._release(project_id)

    def _release(self, project_id: int) -> None:
        with self._cv:
            lock = self._owned.pop(project_id, None)
            self._cv.notify_all()
        if lock is not None:
            lock.release()
        # A press that came while we released could not take the lock: serve it now.
        if again_path(self.settings, project_id).exists() and not self._closed:
            self._claim(project_id, wait_s=LOCK_WAIT_S)

    def status(self, project_id: int) -> JobState | None:
        return local_status(self.settings, check_project_id(project_id))

    def wait(self, project_id: int, timeout: float) -> JobState | None:
        """Block until this runner no longer owns the project (for tests); TimeoutError after ``timeout`` s."""
        project_id = check_project_id(project_id)
        deadline = time.monotonic() + timeout
        with self._cv:
            while project_id in self._owned:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"analysis of project {project_id} still queued or running after {timeout} s")
                self._cv.wait(left)
        return self.status(project_id)

    def shutdown(self, timeout: float | None = None) -> list[int]:
        """Stop taking work; queued analyses become ``interrupted``; wait up to ``timeout`` s for
        running ones. Returns the projects still running (their threads are daemons: if the process
        exits, they are reported interrupted at the next start)."""
        with self._cv:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cv:
            return sorted(self._owned)


# --- RQ runner -------------------------------------------------------------------------------------

# Take the project if free (or if its holder is the stale one the caller checked), else flag a
# follow-up. KEYS: active, again. ARGV: our token, the holder the caller saw, '1' if it is stale.
# Our own token is ours: a retry after a lost reply must not read it as another job's.
_CLAIM_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  return 'claimed'
end
if (not cur) or (cur == ARGV[2] and ARGV[3] == '1') then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 'claimed'
end
if cur == ARGV[2] then
  redis.call('SET', KEYS[2], '1')
  return 'again'
end
return cur
"""

# After a run: keep the project for a follow-up if one was requested, else release it.
# KEYS: active, again. ARGV: our RQ job id.
_FINISH_LUA = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or string.sub(cur, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then
  return 'lost'
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'again'
end
redis.call('DEL', KEYS[1])
return 'released'
"""

_DEAD_RQ_STATES = (RQJobStatus.FINISHED, RQJobStatus.FAILED, RQJobStatus.STOPPED, RQJobStatus.CANCELED)

T = TypeVar("T")


class _Keys(NamedTuple):
    """A project's Redis keys: its owner (KEYS[1] of the Lua scripts), the follow-up flag
    (KEYS[2]) and the running job's heartbeat."""
    active: str
    again: str
    alive: str

    @property
    def locking(self) -> list[str]:
        return [self.active, self.again]


def _redis_keys(queue_name: str, project_id: int) -> _Keys:
    prefix = f"deconfusion:{queue_name}:project:{int(project_id)}"
    return _Keys(f"{prefix}:active", f"{prefix}:again", f"{prefix}:alive")


@contextmanager
def _heartbeat(redis: Redis, key: str, job_id: str) -> Iterator[None]:
    """Keep ``key`` = ``job_id`` alive in Redis while the block runs (a daemon thread refreshes it)."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                redis.set(key, job_id, px=int(HEARTBEAT_TTL_S * 1000))
            except RedisError as exc:  # Redis away for a moment: the next beat may get through
                log.warning("heartbeat of RQ job %s not written: %s", job_id, exc)
            if stop.wait(HEARTBEAT_EVERY_S):
                return

    thread = threading.Thread(target=beat, name="deconfusion-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with suppress(RedisError):
            redis.delete(key)


def _lost_worker(redis: Redis, job: Job, project_id: int, queue_name: str) -> bool:
    """A started RQ job whose worker has not beaten for HEARTBEAT_TTL_S: killed or gone."""
    if job.get_status(refresh=False) != RQJobStatus.STARTED or job.started_at is None:
        return False
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=timezone.utc)
    if (datetime.now(timezone.utc) - started).total_seconds() <= HEARTBEAT_TTL_S:
        return False
    beat = redis.get(_redis_keys(queue_name, project_id).alive)
    return (beat.decode() if isinstance(beat, bytes) else beat) != job.id


def _with_retries(action: Callable[[], T], what: str, delays: Iterable[float] = REDIS_RETRY_DELAYS_S) -> T:
    for delay in (*delays, None):
        try:
            return action()
        except RedisError as exc:
            if delay is None:
                raise JobQueueUnavailable(
                    f"Redis did not answer while {what} ({type(exc).__name__}: {exc}); check REDIS_URL and that "
                    "Redis is running, then press Start Training again") from None
            log.warning("Redis did not answer while %s (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _redis(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                          socket_timeout=REDIS_SOCKET_TIMEOUT_S)


def settings_payload(settings: Settings) -> dict:
    """Settings for an RQ job: everything but secrets, plus the names of the secrets that were set."""
    values = dataclasses.asdict(settings)
    secrets = [name for name in SECRET_SETTINGS if values.pop(name, "")]
    for name in WEB_ONLY_SECRETS:
        values.pop(name)
    return {**values, "_secrets": secrets}


def settings_from_payload(payload: dict) -> Settings:
    """The worker's Settings: the web service's values; secrets, and the machine settings its own
    environment sets, from the worker's own environment."""
    names = {f.name for f in dataclasses.fields(Settings)}
    ignored = sorted(set(payload) - names - {"_secrets"})
    if ignored:
        log.warning("ignoring settings this worker does not know: %s (is the worker's code older?)", ignored)
    values = {k: v for k, v in payload.items() if k in names and k not in SECRET_SETTINGS}
    wanted = list(payload.get("_secrets") or [])
    own = Settings.from_env()  # the worker's environment, read once per job
    values.update(_machine_values(own))
    if wanted:
        missing = [name for name in wanted if not getattr(own, name, "")]
        if missing:
            raise DeConfusionError(
                "this RQ worker's environment lacks " + ", ".join(ENV_NAMES[n] for n in missing) +
                " (secrets are not sent through Redis); give workers the same environment as the web service")
        values.update({name: getattr(own, name) for name in wanted})
    settings = Settings(**values)
    settings.validate()
    return settings


def _machine_values(own: Settings) -> dict:
    """The machine settings the worker's own environment sets."""
    return {name: getattr(own, name) for name in MACHINE_SETTINGS if os.environ.get(ENV_NAMES[name])}


def _failure_settings(payload: dict) -> Settings:
    """Settings to report a worker's failure with: the web service's, but where this worker mounts
    the shared MODEL_DIR, so the failure reaches the web service's job.json."""
    names = {f.name for f in dataclasses.fields(Settings)}
    base = Settings(**{k: v for k, v in payload.items() if k in names and k not in SECRET_SETTINGS})
    try:
        return dataclasses.replace(base, **_machine_values(Settings.from_env()))
    except Exception:  # a malformed environment: its error is the one being reported
        return base


def run_analysis_job(project_id: int, settings_dict: dict, analyze_fn_path: str) -> JobState:
    """RQ job function (module level, so workers import it): run the project's analysis, then the
    follow-up runs requested meanwhile, then release the project. Never raises an analysis error.
    Its heartbeat and the project's lock use the worker's own Redis connection (the web service
    may reach Redis at another address)."""
    project_id = int(project_id)
    base = _failure_settings(settings_dict)
    current = get_current_job()
    job_id = current.id if current is not None else None
    state: JobState = {}
    try:
        settings = settings_from_payload(settings_dict)
        analyze_fn: AnalyzeFn | None = resolve(analyze_fn_path)
    except Exception as exc:  # a misconfigured worker: say so in the job state, then release
        log.error("project %s: %s", project_id, describe(exc))
        state = update_job(base, project_id, status=JobStatus.FAILED.value, finished_at=now(),
                           worker=worker_name(), message=f"the RQ worker cannot run analyses: {describe(exc)}")
        settings, analyze_fn = base, None
    if job_id is None:  # called directly, not by a worker: no project lock to release
        return execute(project_id, settings, analyze_fn) if analyze_fn is not None else state
    redis = current.connection
    with _heartbeat(redis, _redis_keys(settings.queue_name, project_id).alive, job_id):
        return _run_and_follow_up(project_id, settings, analyze_fn, redis, job_id, state)


def _run_and_follow_up(project_id: int, settings: Settings, analyze_fn: AnalyzeFn | None, redis: Redis,
                       job_id: str, state: JobState) -> JobState:
    """The owner's loop: run, then release the project or run the follow-up requested meanwhile."""
    finish = redis.register_script(_FINISH_LUA)
    keys = _redis_keys(settings.queue_name, project_id)
    while True:
        if analyze_fn is not None:
            state = execute(project_id, settings, analyze_fn)
        try:
            outcome = _with_retries(lambda: finish(keys=keys.locking, args=[job_id]), "releasing the project")
        except JobQueueUnavailable as exc:  # the next Start Training sees this job finished and takes over
            log.error("project %s: %s", project_id, exc)
            return state
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome != "again" or analyze_fn is None:
            if outcome == "again":  # cannot run: release the project, keep the request for later
                try:
                    _with_retries(lambda: redis.delete(keys.active), "releasing the project")
                except JobQueueUnavailable as exc:
                    log.error("project %s: %s", project_id, exc)
            return state
        update_job(settings, project_id, status=JobStatus.QUEUED.value, queued_at=now(), started_at=None,
                   finished_at=None, stage=None, done=0, total=0, eta_seconds=None, requested_again=False,
                   message="a follow-up analysis was requested during the last run; starting it")
        try:
            _with_retries(lambda: redis.delete(keys.again), "starting the follow-up run")
        except JobQueueUnavailable as exc:  # the flag stays: at worst one extra run later
            log.error("project %s: %s", project_id, exc)


class RQRunner:
    """Analyses as RQ jobs on ``settings.queue_name``; ``rq`` workers sharing MODEL_DIR run them.

    Per project a Redis key names the owning RQ job (``<job id>|<queued epoch>``) and another flags
    a follow-up run. A holder whose RQ job finished, failed, stopped or vanished is stale: the next
    submit takes over, and :meth:`status` reports its job ``interrupted``.
    """

    def __init__(self, settings: Settings, analyze_fn_path: str, *,
                 retry_delays: Iterable[float] = REDIS_RETRY_DELAYS_S) -> None:
        if not settings.redis_url:
            raise ValueError("RQRunner needs settings.redis_url (REDIS_URL), e.g. redis://localhost:6379/0")
        module, sep, name = str(analyze_fn_path).partition(":")
        if not (module and sep and name):  # imported by workers, not here
            raise ValueError(f"analyze_fn_path must look like 'package.module:function', got {analyze_fn_path!r}")
        self.settings, self.analyze_fn_path = settings, analyze_fn_path
        self.retry_delays = tuple(retry_delays)
        self.redis = _redis(settings)  # connects on first use
        self.queue = Queue(settings.queue_name, connection=self.redis)
        self._claim = self.redis.register_script(_CLAIM_LUA)

    def submit(self, project_id: int) -> JobState:
        """Enqueue an analysis, or flag one follow-up run if the project's job is queued or running.
        Raises JobQueueUnavailable when Redis does not answer after retries."""
        project_id = check_project_id(project_id)
        keys = _redis_keys(self.settings.queue_name, project_id)
        job_id = f"deconfusion-{project_id}-{uuid.uuid4().hex[:12]}"
        token = f"{job_id}|{time.time():.0f}"
        seen, stale = "", "0"
        for _ in range(5):
            outcome = self._retry(lambda: self._claim(keys=keys.locking, args=[token, seen, stale]),
                                  "queueing the analysis")
            outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
            if outcome == "claimed":
                break
            if outcome == "again":
                log.info("project %s: analysis already queued or running; one follow-up run requested", project_id)
                return {**(read_job(self.settings, project_id) or {"project_id": project_id}), "requested_again": True}
            seen = outcome
            stale = "1" if self._retry(lambda: self._holder_is_stale(seen, project_id),
                                       "checking the running analysis") else "0"
            if stale == "1":
                log.warning("project %s: taking over from RQ job %s, which no longer runs", project_id, seen)
        else:
            raise JobQueueUnavailable(f"project {project_id}: the analysis lock kept changing hands; try again")
        state = update_job(self.settings, project_id, status=JobStatus.QUEUED.value, queued_at=now(),
                           started_at=None, finished_at=None, duration_seconds=None, stage=None, done=0, total=0,
                           eta_seconds=None, requested_again=False, runner="rq", rq_job_id=job_id, worker=None,
                           message=f"queued on RQ queue '{self.settings.queue_name}'; waiting for a worker "
                                   "(python -m ml_backend worker)")
        payload = settings_payload(self.settings)

        def enqueue_once() -> None:  # a retry after a lost reply must not queue the job twice
            if not Job.exists(job_id, connection=self.redis):
                self.queue.enqueue(run_analysis_job, project_id, payload, self.analyze_fn_path, job_id=job_id,
                                   job_timeout=JOB_TIMEOUT_S, result_ttl=RESULT_TTL_S, failure_ttl=RESULT_TTL_S,
                                   description=f"De-Confusion analysis of project {project_id}")
        try:
            self._retry(enqueue_once, "queueing the analysis")
        except JobQueueUnavailable as exc:
            update_job(self.settings, project_id, status=JobStatus.FAILED.value, finished_at=now(), message=str(exc))
            try:  # free the project now; if Redis is down, the next submit finds the job missing and takes over
                self.redis.delete(keys.active)
            except RedisError:
                pass
            raise
        log.info("project %s: analysis queued as RQ job %s", project_id, job_id)
        return state

    def _retry(self, action: Callable[[], T], what: str) -> T:
        return _with_retries(action, what, self.retry_delays)

    def _holder_is_stale(self, token: str, project_id: int) -> bool:
        job_id, _, queued = token.partition("|")
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            try:
                return time.time() - float(queued) > ENQUEUE_GRACE_S
            except ValueError:
                return True
        return job.get_status(refresh=False) in _DEAD_RQ_STATES or self._worker_gone(job, project_id)

    def _worker_gone(self, job: Job, project_id: int) -> bool:
        """A started job whose worker beats no more and whose progress in job.json (on the shared
        MODEL_DIR) stands still: when Redis missed its beats for a while, the job.json it goes on
        writing says it is alive, and a second press must not start a second analysis beside it."""
        if not _lost_worker(self.redis, job, project_id, self.settings.queue_name):
            return False
        state = read_job(self.settings, project_id) or {}
        return state.get("rq_job_id") != job.id or state.get("status") not in ACTIVE \
            or age_seconds(state.get("updated_at")) > HEARTBEAT_TTL_S

    def status(self, project_id: int) -> JobState | None:
        """job.json, reconciled with RQ (one quick Redis look-up; never retried, never raises)."""
        project_id = check_project_id(project_id)
        job = read_job(self.settings, project_id)
        if job is None or job.get("runner") != "rq":  # none yet, or left by a local runner
            return local_status(self.settings, project_id)
        try:
            if job.get("status") in ACTIVE:
                job = self._reconcile_rq(project_id, job)
            job["requested_again"] = bool(self.redis.exists(_redis_keys(self.settings.queue_name, project_id).again))
        except RedisError as exc:
            job["queue_error"] = f"Redis did not answer ({type(exc).__name__}: {exc}); this state may be out of date"
        return job

    def _reconcile_rq(self, project_id: int, job: JobState) -> JobState:
        rq_id = job.get("rq_job_id")
        try:
            rq_job = Job.fetch(str(rq_id), connection=self.redis)
            rq_status = rq_job.get_status(refresh=False)
        except NoSuchJobError:
            if age_seconds(job.get("queued_at")) <= ENQUEUE_GRACE_S:
                return job
            rq_job = rq_status = None
        lost = rq_job is not None and self._worker_gone(rq_job, project_id)
        if rq_status is not None and rq_status not in _DEAD_RQ_STATES and not lost:
            return job
        latest = read_job(self.settings, project_id) or job  # the worker may have just finished
        if latest.get("status") not in ACTIVE or latest.get("rq_job_id") != rq_id:
            return latest
        what = ("vanished from Redis" if rq_status is None else
                f"has not reported for {HEARTBEAT_TTL_S:g} s: killed, out of memory, or its machine is gone" if lost
                else f"is {rq_status.value}")
        state = mark_interrupted(self.settings, project_id, latest, f"the RQ worker stopped (RQ job {rq_id} {what})")
        log.warning("project %s: %s", project_id, state["message"])
        return state


def make_runner(settings: Settings, analyze_fn_path: str) -> LocalRunner | RQRunner:
    """RQRunner when settings.redis_url is set, else LocalRunner (which imports the function now)."""
    if settings.redis_url:
        return RQRunner(settings, analyze_fn_path)
    return LocalRunner(settings, resolve(analyze_fn_path))
