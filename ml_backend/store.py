"""Per-project state under ``MODEL_DIR/projects/<id>/``: analysis versions, the current
version, reviewers' verdicts and the iteration history. Standard library + our artefact.

Layout::

    current.json            {"model_version": ..., "iteration": n, "input_fingerprint": ... once published}
    versions/<version>/     analysis.json, arrays.npz, thumbs.npy, model.pt (one folder per analysis;
                            written as <version>.partial/ and renamed when complete)
    verdicts.json           {task_id: {"verdict", "label", "annotation_id", "updated_at", "version"}}
    history.json            one entry per iteration (see views.report)
    job.json                job state (jobs module)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .analysis import Analysis, load

PARTIAL = ".partial"  # suffix of a version folder still being written
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``path`` for a read-modify-write, against other threads (a lock) and other processes
    (``flock`` on a side file): gunicorn's workers and RQ workers write the same project files."""
    with _lock_for(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes
            yield


def write_json(path: Path, value: Any) -> None:
    """Atomic write: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


class ProjectStore:
    def __init__(self, model_dir: str | os.PathLike, project_id: int) -> None:
        self.project_id = int(project_id)
        self.root = Path(model_dir) / "projects" / str(self.project_id)

    # versions -----------------------------------------------------------------
    def version_dir(self, model_version: str) -> Path:
        return self.root / "versions" / model_version

    @contextmanager
    def new_version(self, model_version: str) -> Iterator[Path]:
        """A folder to write a new version's files into; moved into place whole when the block
        ends without error, so a job killed or failing on the way leaves no half-written version.
        Partial folders of earlier jobs (one analysis per project runs at a time) are cleared."""
        versions = self.root / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        for stale in versions.glob(f"*{PARTIAL}"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = versions / f"{model_version}{PARTIAL}"
        partial.mkdir()
        try:
            yield partial
            partial.replace(self.version_dir(model_version))
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def current(self) -> dict:
        return read_json(self.root / "current.json", {})

    def current_version(self) -> str | None:
        return self.current().get("model_version")

    def next_iteration(self) -> int:
        return int(self.current().get("iteration", 0)) + 1

    def set_current(self, model_version: str, iteration: int) -> None:
        write_json(self.root / "current.json", {"model_version": model_version, "iteration": iteration})

    def mark_published(self, input_fingerprint: str) -> None:
        """The current version is published completely, from inputs with this fingerprint."""
        write_json(self.root / "current.json", {**self.current(), "input_fingerprint": input_fingerprint})

    def load_analysis(self, model_version: str | None = None) -> Analysis | None:
        version = model_version or self.current_version()
        return load(self.version_dir(version)) if version else None

    def versions(self) -> list[str]:
        """Analyses that were published completely (a job killed on the way leaves a folder that
        is not listed; the next analysis replaces what it published)."""
        finished = {h.get("model_version") for h in self.history()}
        base = self.root / "versions"
        return sorted(p.name for p in base.iterdir() if p.name in finished and (p / "analysis.json").exists()) \
            if base.exists() else []

    # verdicts -----------------------------------------------------------------
    def verdicts(self) -> dict[str, dict]:
        return read_json(self.root / "verdicts.json", {})

    def record_verdict(self, task_id: int, verdict: dict) -> bool:
        """Store a task's verdict; returns False when nothing changed (idempotent webhooks)."""
        return bool(self.record_verdicts({task_id: verdict}))

    def record_verdicts(self, verdicts: Mapping[int, dict],
                        replaces: Callable[[dict, dict], bool] = lambda stored, new: True) -> list[int]:
        """Store several tasks' verdicts in one write (a batch of annotations from "select all");
        a stored verdict is replaced only where ``replaces(stored, new)``. Returns the task ids
        whose verdict changed."""
        path = self.root / "verdicts.json"
        new = {str(int(t)): v for t, v in verdicts.items()}
        with _locked(path):
            stored = read_json(path, {})
            changed = [k for k, v in new.items() if stored.get(k) != v and (k not in stored or replaces(stored[k], v))]
            if changed:
                stored.update({k: new[k] for k in changed})
                write_json(path, stored)
            return [int(k) for k in changed]

    def forget_verdict(self, task_id: int) -> bool:
        path = self.root / "verdicts.json"
        with _locked(path):
            verdicts = read_json(path, {})
            if verdicts.pop(str(int(task_id)), None) is None:
                return False
            write_json(path, verdicts)
            return True

    # history ------------------------------------------------------------------
    def history(self) -> list[dict]:
        return read_json(self.root / "history.json", [])

    def append_rerank(self, entry: dict) -> None:
        """One line per re-rank between analyses (see ``service.verdicts.rerank_published``)."""
        path = self.root / "reranks.json"
        with _locked(path):
            write_json(path, read_json(path, []) + [entry])

    def reranks(self) -> list[dict]:
        return read_json(self.root / "reranks.json", [])

    def append_history(self, entry: dict) -> None:
        path = self.root / "history.json"
        with _locked(path):
            history = [h for h in read_json(path, []) if h.get("model_version") != entry.get("model_version")]
            write_json(path, history + [entry])

    def settings_file(self) -> Path:
        return self.root / "project.json"

    def project_info(self) -> dict:
        return read_json(self.settings_file(), {})

    def update_project_info(self, **values: Any) -> None:
        with _locked(self.settings_file()):
            write_json(self.settings_file(), {**self.project_info(), **values})
