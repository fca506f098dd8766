"""Per-project state on disk: a version folder appears whole or not at all; writers in several
processes (gunicorn and RQ workers) lose no verdict or setting."""

from __future__ import annotations

import multiprocessing

import pytest

from ml_backend.store import PARTIAL, ProjectStore


def test_a_new_version_appears_only_once_all_its_files_are_written(tmp_path):
    store = ProjectStore(tmp_path, 3)
    with store.new_version("dc-v1") as folder:
        (folder / "analysis.json").write_text("{}")
        assert not store.version_dir("dc-v1").exists()  # readers never see it half written
    assert (store.version_dir("dc-v1") / "analysis.json").read_text() == "{}"
    assert not list(store.version_dir("dc-v1").parent.glob(f"*{PARTIAL}"))


def test_a_failed_write_leaves_no_version_and_a_killed_ones_leftovers_are_cleared(tmp_path):
    store = ProjectStore(tmp_path, 3)
    with pytest.raises(OSError):
        with store.new_version("dc-v1") as folder:
            (folder / "arrays.npz").write_bytes(b"half")
            raise OSError("disk full")
    assert not store.version_dir("dc-v1").exists()
    killed = store.version_dir("dc-v2").parent / f"dc-v2{PARTIAL}"  # as a job killed mid-write leaves it
    killed.mkdir()
    with store.new_version("dc-v3"):
        pass
    assert not killed.exists() and sorted(p.name for p in killed.parent.iterdir()) == ["dc-v3"]


def _record_many(model_dir, worker: int) -> None:
    store = ProjectStore(model_dir, 3)
    for n in range(40):
        store.record_verdict(worker * 100 + n, {"verdict": "kept", "label": "cat"})
        store.update_project_info(**{f"w{worker}_{n}": n})


def test_writers_in_several_processes_lose_nothing(tmp_path):
    workers = [multiprocessing.get_context("fork").Process(target=_record_many, args=(tmp_path, w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    store = ProjectStore(tmp_path, 3)
    assert len(store.verdicts()) == 160 and len(store.project_info()) == 160
