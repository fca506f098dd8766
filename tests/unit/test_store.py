"""Per-project state on disk: a version folder appears whole or not at all."""

from __future__ import annotations

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
