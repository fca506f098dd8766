"""Routes for people and scripts watching the backend: one project's job state (stage,
counts, ETA, message) and the service's metrics (jobs, /predict latency, request counts, the
process' peak memory)."""

from __future__ import annotations

import resource
import time
from collections import Counter

from flask import Blueprint, jsonify

from .backend import backend
from .contract import MODEL_CLASS
from .jobs import ACTIVE, JobState, list_jobs, local_status
from .requests import project_from

status = Blueprint("status", __name__)


@status.get("/jobs/<int:project_id>")
def job(project_id: int):
    service = backend()
    project_id = project_from(project_id)
    state: JobState | None = service.runner.status(project_id) if service.runner is not None \
        else local_status(service.settings, project_id)
    if state is None:
        return jsonify({"error": f"project {project_id} has no analysis job yet; press Start Training "
                                 "in the project's Settings → Model"}), 404
    return jsonify(state)


@status.get("/metrics")
def metrics():
    service = backend()
    jobs = list_jobs(service.settings)
    by_status = Counter(str(j.get("status")) for j in jobs.values())
    durations = {str(pid): j.get("duration_seconds") for pid, j in jobs.items()
                 if j.get("duration_seconds") is not None}
    counts, latencies = service.stats.snapshot()
    return jsonify({
        "model_class": MODEL_CLASS,
        "uptime_seconds": round(time.monotonic() - service.stats.started, 1),
        "jobs": {"by_status": dict(by_status), "active": sum(by_status[s] for s in ACTIVE),
                 "last_duration_seconds": durations},
        "predict": {"requests": counts.get("predict_requests", 0),
                    "tasks": counts.get("predict_tasks", 0),
                    "latency_ms": {"p50": _percentile_ms(latencies, 0.5), "p95": _percentile_ms(latencies, 0.95),
                                   "window": len(latencies)}},
        "counts": counts,
        # analyses run in this process unless REDIS_URL hands them to workers (Linux reports kB)
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })


def _percentile_ms(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)
