"""What every route shares: settings, the job runner, the predictor, the verdict handler and
the request counters (one :class:`Backend` per app, in ``app.extensions``)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from flask import current_app

from ..config import Settings
from .jobs import JobRunner

LATENCY_WINDOW = 1000
"""Predict latencies kept for the /metrics percentiles (most recent requests)."""

Predictor = Callable[[int, list, "str | None"], list]
"""predictor(project_id, tasks, label_config) -> one prediction dict per task, same order;
every task has a valid integer ``id``."""
VerdictHandler = Callable[[str, int, list], "Mapping[str, Any] | None"]
"""verdict_handler(action, project_id, annotation_ids) -> JSON-able answer. The ids are only
hints: the handler reads the annotations themselves from Label Studio."""
ProjectCheck = Callable[[int], None]
"""project_check(project_id) raises UnknownProject when Label Studio has no such project."""


class RequestStats:
    """Counters and recent /predict latencies for /metrics; safe across request threads."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._counts: Counter[str] = Counter()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def predicted(self, seconds: float, tasks: int) -> None:
        with self._lock:
            self._latencies.append(seconds)
            self._counts["predict_requests"] += 1
            self._counts["predict_tasks"] += tasks

    def snapshot(self) -> tuple[dict[str, int], list[float]]:
        """(counts, latencies sorted ascending)."""
        with self._lock:
            return dict(self._counts), sorted(self._latencies)


@dataclass
class Backend:
    """What the routes share; heavy work lives in ``runner`` (analysis jobs) and ``predictor``."""

    settings: Settings
    runner: JobRunner | None = None
    predictor: Predictor | None = None
    verdict_handler: VerdictHandler | None = None
    project_check: ProjectCheck | None = None
    stats: RequestStats = field(default_factory=RequestStats)


EXTENSION = "deconfusion"  # key of the app's Backend in ``app.extensions``


def backend() -> Backend:
    """The :class:`Backend` of the app serving this request."""
    return current_app.extensions[EXTENSION]
