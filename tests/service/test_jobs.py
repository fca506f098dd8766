"""Job state and runners: one analysis per project, coalesced presses, failures as status,
interrupted jobs, progress; the RQ runner against a real redis-server with an in-process worker."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job

from ml_backend.service import jobs, runners
from ml_backend.errors import DatasetError
from ml_backend.service.jobs import (JobQueueUnavailable, JobStatus, job_path, local_status, read_job,
                                     recover_interrupted, update_job)
from ml_backend.service.runners import LocalRunner, RQRunner, make_runner
from tests.service import conftest
from tests.service.conftest import SlowAnalysis, free_port, wait_until

OK_PATH = "tests.service.conftest:analyze_ok"
FAILS_PATH = "tests.service.conftest:analyze_fails"
HANGS_PATH = "tests.service.conftest:analyze_hangs"


def test_job_status_is_a_string_enum():
    assert [s.value for s in JobStatus] == ["queued", "running", "done", "failed", "interrupted"]
    assert JobStatus.DONE == "done" and JobStatus("failed") is JobStatus.FAILED


# --- LocalRunner -------------------------------------------------------------------------------------

def test_a_submitted_analysis_runs_in_the_background_and_records_its_version(settings, slow):
    runner = LocalRunner(settings, slow)
    first = runner.submit(5)
    assert first["status"] == "queued" and first["runner"] == "local" and first["requested_again"] is False
    assert slow.started.wait(5)
    assert runner.status(5)["status"] == "running"
    slow.release()
    job = runner.wait(5, timeout=5)
    assert job["status"] == JobStatus.DONE and job["model_version"] == "deconfusion-v1"
    assert job["started_at"] and job["finished_at"] and job["duration_seconds"] >= 0
    assert job["stage"] == "done" and job["requested_again"] is False
    on_disk = json.loads(job_path(settings, 5).read_text())
    assert on_disk["status"] == "done" and on_disk["model_version"] == "deconfusion-v1"
    assert not [p for p in job_path(settings, 5).parent.iterdir() if p.name.endswith(".tmp")]  # atomic writes
    runner.shutdown(timeout=5)


def test_presses_during_a_run_coalesce_into_exactly_one_follow_up(settings, slow):
    runner = LocalRunner(settings, slow)
    runner.submit(5)
    assert slow.started.wait(5)
    for _ in range(3):
        assert runner.submit(5)["requested_again"] is True
    assert runner.status(5)["requested_again"] is True
    slow.release()
    job = runner.wait(5, timeout=5)
    assert slow.calls == [5, 5]
    assert job["status"] == "done" and job["model_version"] == "deconfusion-v2" and job["requested_again"] is False
    runner.shutdown(timeout=5)


def test_projects_queue_behind_the_running_one_with_one_worker(settings, slow):
    runner = LocalRunner(settings, slow, max_workers=1)
    runner.submit(1)
    assert slow.started.wait(5)
    assert runner.submit(2)["status"] == "queued"
    assert runner.status(2)["status"] == "queued" and runner.status(2)["requested_again"] is False
    slow.release()
    assert runner.wait(1, 5)["status"] == "done" and runner.wait(2, 5)["status"] == "done"
    assert slow.calls == [1, 2]
    runner.shutdown(timeout=5)


def test_a_failing_analysis_is_a_readable_status_and_the_runner_keeps_working(settings):
    analysis = SlowAnalysis(fail={13: DatasetError("only one class is labeled; label at least two classes"),
                                  14: KeyError("image")})
    analysis.release()
    runner = LocalRunner(settings, analysis)
    runner.submit(13)
    job = runner.wait(13, 5)
    assert job["status"] == "failed" and job["message"] == "only one class is labeled; label at least two classes"
    runner.submit(14)
    job = runner.wait(14, 5)
    assert job["status"] == "failed" and job["message"] == "KeyError: 'image'" and "Traceback" not in job["message"]
    runner.submit(15)
    assert runner.wait(15, 5)["status"] == "done"
    runner.shutdown(timeout=5)


def test_an_analysis_that_returns_no_version_fails_clearly(settings):
    runner = LocalRunner(settings, lambda project_id, settings, progress: None)
    runner.submit(3)
    job = runner.wait(3, 5)
    assert job["status"] == "failed" and "instead of a model version string" in job["message"]


def test_a_job_left_running_by_a_dead_process_is_marked_interrupted(settings):
    update_job(settings, 8, status="running", stage="train", done=3, total=10, runner="local")
    update_job(settings, 9, status="done", model_version="deconfusion-v1", runner="local")
    assert recover_interrupted(settings) == [8]
    job = read_job(settings, 8)
    assert job["status"] == "interrupted" and "Start Training" in job["message"] and "train, 3/10" in job["message"]
    assert read_job(settings, 9)["status"] == "done"


def test_a_job_a_live_runner_owns_is_not_marked_interrupted(settings, slow):
    runner = LocalRunner(settings, slow)
    runner.submit(4)
    assert slow.started.wait(5)
    assert recover_interrupted(settings) == []  # e.g. a sibling gunicorn worker starting up
    assert local_status(settings, 4)["status"] == "running"
    slow.release()
    assert runner.wait(4, 5)["status"] == "done"


def test_presses_in_another_process_coalesce_too(settings, slow):
    """Two runners on one MODEL_DIR stand for two gunicorn workers: the file lock is shared."""
    a, b = LocalRunner(settings, slow), LocalRunner(settings, slow)
    a.submit(6)
    assert slow.started.wait(5)
    assert b.submit(6)["requested_again"] is True
    assert b.submit(6)["requested_again"] is True
    slow.release()
    assert a.wait(6, 5)["status"] == "done"
    assert slow.calls == [6, 6]  # run by the owner, once more
    assert b.wait(6, 1)["model_version"] == "deconfusion-v2"


def test_progress_is_written_with_eta_and_logged_at_most_every_ten_seconds(settings, caplog):
    seen = []

    def analysis(project_id, settings, progress):
        for i in range(1, 201):
            progress("embed", i, 200)
            if i == 100:
                seen.append(read_job(settings, project_id))
        return "deconfusion-v1"

    runner = LocalRunner(settings, analysis)
    with caplog.at_level(logging.INFO, logger="ml_backend.service.jobs"):
        runner.submit(2)
        runner.wait(2, 5)
    assert seen[0]["stage"] == "embed" and seen[0]["total"] == 200 and seen[0]["status"] == "running"
    progress_lines = [r for r in caplog.records if "embed" in r.getMessage()]
    assert len(progress_lines) == 1  # one per stage change, then at most every LOG_EVERY_S


def test_job_status_says_when_review_can_start_and_what_follows(settings):
    seen = {}
    later = ("queue", "more fields", "predictions", "old predictions")

    def analysis(project_id, settings, progress):
        for stage in ("publish", *later):
            progress(stage, 0, 2)
            seen[stage] = read_job(settings, project_id)["message"]
        return "deconfusion-v1"

    runner = LocalRunner(settings, analysis)
    runner.submit(3)
    runner.wait(3, 5)
    assert seen["publish"] == jobs.ANALYSIS_MESSAGE
    assert all(seen[stage].startswith("review can start") for stage in later)
    assert len({seen[stage] for stage in later}) == len(later)  # each says what is still to come
    assert "every task has this version's prediction" in seen["old predictions"]


def test_shutdown_interrupts_queued_jobs_and_refuses_new_ones(settings, slow):
    runner = LocalRunner(settings, slow)
    runner.submit(1)
    assert slow.started.wait(5)
    runner.submit(2)
    threading.Timer(0.2, slow.release).start()
    assert runner.shutdown(timeout=5) == []
    assert read_job(settings, 1)["status"] == "done"
    assert read_job(settings, 2)["status"] == "interrupted"
    with pytest.raises(JobQueueUnavailable, match="shutting down"):
        runner.submit(3)


def test_bad_arguments_are_refused_with_clear_errors(settings):
    with pytest.raises(ValueError, match="max_workers"):
        LocalRunner(settings, lambda *a: "v", max_workers=0)
    runner = LocalRunner(settings, lambda *a: "v")
    with pytest.raises(ValueError, match="positive"):
        runner.submit(0)
    with pytest.raises(TypeError, match="project_id"):
        runner.submit(True)
    with pytest.raises(ValueError, match="package.module:function"):
        make_runner(settings, "no_colon")
    with pytest.raises(ValueError, match="cannot import"):
        make_runner(settings, "tests.service.conftest:no_such_function")
    assert isinstance(make_runner(settings, OK_PATH), LocalRunner)


# --- RQRunner against a real redis-server ---------------------------------------------------------------

def work(settings):
    connection = Redis.from_url(settings.redis_url)
    SimpleWorker([Queue(settings.queue_name, connection=connection)], connection=connection).work(burst=True)


def test_rq_runs_the_job_on_a_worker_and_coalesces_presses(settings, redis_url):
    settings = settings.replace(redis_url=redis_url)
    runner = make_runner(settings, OK_PATH)
    assert isinstance(runner, RQRunner)
    first = runner.submit(4)
    assert first["status"] == "queued" and first["runner"] == "rq" and first["requested_again"] is False
    assert "waiting for a worker" in first["message"]
    for _ in range(3):
        assert runner.submit(4)["requested_again"] is True
    assert runner.status(4)["requested_again"] is True
    assert len(Queue(settings.queue_name, connection=Redis.from_url(redis_url))) == 1
    work(settings)
    assert [c[0] for c in conftest.RQ_CALLS] == [4, 4]  # one run, then exactly one follow-up
    job = runner.status(4)
    assert job["status"] == "done" and job["model_version"] == "deconfusion-rq-4-2" and job["requested_again"] is False
    assert job["total"] == 2 and job["worker"]
    assert runner.submit(4)["status"] == "queued"  # the project is free again


def test_rq_failure_is_recorded_by_the_worker(settings, redis_url):
    settings = settings.replace(redis_url=redis_url)
    runner = RQRunner(settings, FAILS_PATH)
    runner.submit(7)
    work(settings)
    job = runner.status(7)
    assert job["status"] == "failed" and job["message"] == "only one class is labeled; label at least two classes"


def test_rq_secrets_stay_out_of_redis_and_come_from_the_workers_environment(settings, redis_url, monkeypatch):
    settings = settings.replace(redis_url=redis_url, label_studio_api_key="s3cret-token",
                                webhook_secret="hook-s3cret")
    runner = RQRunner(settings, OK_PATH)
    job_id = runner.submit(3)["rq_job_id"]
    sent = repr(Job.fetch(job_id, connection=Redis.from_url(redis_url)).args)
    assert "s3cret-token" not in sent and "hook-s3cret" not in sent  # workers never need the webhook's
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    work(settings)
    job = runner.status(3)
    assert job["status"] == "failed" and "LABEL_STUDIO_API_KEY" in job["message"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "s3cret-token")
    runner.submit(3)
    work(settings)
    assert runner.status(3)["status"] == "done" and conftest.RQ_CALLS == [(3, "s3cret-token")]


def test_rq_job_whose_worker_died_is_reported_interrupted_and_the_next_press_takes_over(settings, redis_url):
    settings = settings.replace(redis_url=redis_url)
    runner = RQRunner(settings, OK_PATH)
    dead = runner.submit(9)["rq_job_id"]
    update_job(settings, 9, status="running", stage="train")  # as a worker would, then it was killed
    Job.fetch(dead, connection=Redis.from_url(redis_url)).cancel()
    job = runner.status(9)
    assert job["status"] == "interrupted" and "RQ worker stopped" in job["message"] and dead in job["message"]
    again = runner.submit(9)
    assert again["status"] == "queued" and again["rq_job_id"] != dead
    work(settings)
    assert runner.status(9)["status"] == "done"


def test_a_worker_killed_mid_job_leaves_an_interrupted_status_and_the_next_press_runs(settings, redis_url):
    """A real `python -m ml_backend worker` process, SIGKILLed (as the OOM killer does) while its
    job runs: RQ still calls the job started, the missing heartbeat tells the truth."""
    settings = settings.replace(redis_url=redis_url)
    env = {**os.environ, "REDIS_URL": redis_url, "MODEL_DIR": settings.model_dir}
    worker = subprocess.Popen([sys.executable, "-m", "ml_backend", "worker"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        killed = RQRunner(settings, HANGS_PATH).submit(9)["rq_job_id"]
        assert wait_until(lambda: (read_job(settings, 9) or {}).get("stage") == "train", timeout=60)
    finally:  # RQ runs the job in a forked "work horse" in a session of its own: kill both
        horses = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        for pid in [worker.pid, *map(int, horses)]:
            os.kill(pid, signal.SIGKILL)
        worker.wait(10)
    runner = RQRunner(settings, OK_PATH)
    assert runner.status(9)["status"] == "running"  # within the heartbeat's lifetime
    assert wait_until(lambda: runner.status(9)["status"] == "interrupted", timeout=runners.HEARTBEAT_TTL_S + 20)
    job = runner.status(9)
    assert killed in job["message"] and "killed" in job["message"] and "train, 1/10" in job["message"]
    assert Job.fetch(killed, connection=Redis.from_url(redis_url)).get_status() == "started"  # RQ does not know
    again = runner.submit(9)
    assert again["status"] == "queued" and again["rq_job_id"] != killed
    work(settings)
    assert runner.status(9)["status"] == "done"


def test_a_worker_whose_beats_redis_missed_but_that_reports_progress_stays_running(settings, redis_url):
    """Redis away for longer than the heartbeat's lifetime: the beats are lost, but the worker's
    progress in job.json is fresh, so the job is not called interrupted (a second press would
    start a second analysis beside it); once that progress is old too, it is."""
    from datetime import datetime, timedelta, timezone
    from rq.job import JobStatus as RQJobStatus
    settings = settings.replace(redis_url=redis_url)
    runner = RQRunner(settings, OK_PATH)
    rq_job = Job.fetch(runner.submit(9)["rq_job_id"], connection=Redis.from_url(redis_url))
    rq_job.set_status(RQJobStatus.STARTED)
    rq_job.started_at = datetime.now(timezone.utc) - timedelta(seconds=runners.HEARTBEAT_TTL_S + 60)
    rq_job.save()  # started long ago, no heartbeat in Redis
    update_job(settings, 9, status="running", stage="train", done=3, total=10)
    assert runner.status(9)["status"] == "running"
    again = runner.submit(9)  # a press now asks for a follow-up; it does not take the project over
    assert again["requested_again"] is True and again["rq_job_id"] == rq_job.id
    old = (datetime.now(timezone.utc) - timedelta(seconds=runners.HEARTBEAT_TTL_S + 5)).isoformat()
    job_path(settings, 9).write_text(json.dumps({**read_job(settings, 9), "updated_at": old}))
    assert runner.status(9)["status"] == "interrupted"


def test_a_press_whose_redis_replies_are_lost_queues_one_analysis(settings, redis_url, monkeypatch):
    """The claim and the enqueue ran, but their replies timed out: the retries take the claim as
    ours and do not queue the job a second time (it would analyse and publish twice)."""
    from redis.exceptions import TimeoutError as RedisTimeout
    settings = settings.replace(redis_url=redis_url)
    runner = RQRunner(settings, OK_PATH, retry_delays=(0.01, 0.01))

    def reply_lost(action):
        lost = []

        def run(*args, **kwargs):
            result = action(*args, **kwargs)
            if not lost:
                lost.append(result)
                raise RedisTimeout("Timeout reading from socket")
            return result
        return run

    runner._claim = reply_lost(runner._claim)
    monkeypatch.setattr(runner.queue, "enqueue", reply_lost(runner.queue.enqueue))
    first = runner.submit(5)
    assert first["status"] == "queued" and first["requested_again"] is False
    assert Queue(settings.queue_name, connection=Redis.from_url(redis_url)).job_ids == [first["rq_job_id"]]
    work(settings)
    assert [c[0] for c in conftest.RQ_CALLS] == [5] and runner.status(5)["status"] == "done"


def test_a_worker_that_reaches_redis_and_the_volume_at_its_own_addresses_beats_releases_and_reports(
        settings, redis_url, monkeypatch, tmp_path):
    """A GPU box: the web service's REDIS_URL and MODEL_DIR mean nothing there. The worker keeps
    the project's lock on its own Redis connection, and writes a failure where it mounts the volume."""
    settings = settings.replace(redis_url=redis_url, label_studio_api_key="s3cret-token")
    runner = RQRunner(settings, OK_PATH)
    web_only = runners.settings_payload
    monkeypatch.setattr(runners, "settings_payload", lambda s: {
        **web_only(s), "redis_url": f"redis://127.0.0.1:{free_port()}/0", "model_dir": str(tmp_path / "web-mount")})
    monkeypatch.setenv("MODEL_DIR", settings.model_dir)  # where the worker mounts the shared volume
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    runner.submit(3)
    work(settings)
    job = runner.status(3)
    assert job["status"] == "failed" and "LABEL_STUDIO_API_KEY" in job["message"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "s3cret-token")
    runner.submit(3)
    assert runner.submit(3)["requested_again"] is True
    work(settings)
    assert [c[0] for c in conftest.RQ_CALLS] == [3, 3]  # the follow-up ran: the lock was on the worker's Redis
    assert runner.status(3)["status"] == "done" and runner.submit(3)["status"] == "queued"  # and is released


def test_redis_down_is_retried_then_reported_clearly(settings):
    settings = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    runner = RQRunner(settings, OK_PATH, retry_delays=(0.01, 0.01))
    started = time.monotonic()
    with pytest.raises(JobQueueUnavailable, match="Redis did not answer.*REDIS_URL"):
        runner.submit(1)
    assert time.monotonic() - started < 5
    assert runner.status(1) is None  # nothing was recorded as queued
    update_job(settings, 1, status="running", runner="rq", rq_job_id="x", queued_at=jobs.now())
    assert "Redis did not answer" in runner.status(1)["queue_error"]  # status still answers


def test_direct_call_of_the_job_function_runs_the_analysis(settings):
    state = runners.run_analysis_job(2, runners.settings_payload(settings), OK_PATH)
    assert state["status"] == "done" and wait_until(lambda: read_job(settings, 2)["status"] == "done")


def test_a_run_that_returns_the_published_version_says_nothing_changed(settings):
    first = jobs.execute(5, settings, lambda project_id, s, progress: "deconfusion-v1")
    again = jobs.execute(5, settings, lambda project_id, s, progress: "deconfusion-v1")
    assert first["message"] == "analysis finished: model version deconfusion-v1"
    assert again["status"] == "done" and "nothing changed since model version deconfusion-v1" in again["message"]
