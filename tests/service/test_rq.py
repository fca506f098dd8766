"""Jobs through RQ with a real redis-server; a Redis outage is a clear error, not a crash."""

import shutil
import socket
import subprocess
import time

import pytest
from redis import Redis
from rq import Queue, SimpleWorker

from ml_backend.config import Settings
from ml_backend.jobs import JobQueueUnavailable, RQRunner, read_job

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def redis_url(tmp_path):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        try:
            Redis.from_url(url).ping()
            break
        except Exception:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait()


def test_rq_worker_runs_the_job_and_presses_coalesce(redis_url, tmp_path):
    settings = Settings.from_env({}, model_dir=str(tmp_path), redis_url=redis_url)
    runner = RQRunner(settings, "tests.service.fake_jobs:analyze")
    assert runner.submit(4)["status"] == "queued"
    assert runner.submit(4)["requested_again"] is True  # a second press while the first is queued
    assert runner.submit(4)["requested_again"] is True
    connection = Redis.from_url(redis_url)
    queue = Queue(settings.queue_name, connection=connection)
    assert len(queue) == 1  # one job in the queue; the follow-up runs inside it
    SimpleWorker([queue], connection=connection).work(burst=True)
    job = read_job(settings, 4)
    assert job["status"] == "done" and job["model_version"] == "deconfusion-rq-4"
    assert runner.submit(4)["status"] == "queued"  # the project is free again


def test_redis_down_is_reported_clearly(tmp_path):
    settings = Settings.from_env({}, model_dir=str(tmp_path), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(JobQueueUnavailable, match="REDIS_URL"):
        RQRunner(settings, "tests.service.fake_jobs:analyze").submit(1)
