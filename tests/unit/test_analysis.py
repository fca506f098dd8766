"""The analysis artefact round-trips losslessly and its exports follow the documented schema."""

import csv
import json

import numpy as np
import pytest

from ml_backend.analysis import CELLS_COLUMNS, SCORES_COLUMNS, Analysis, load, save, write_exports
from ml_backend.errors import ArtefactError


def tiny_analysis() -> Analysis:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]], np.float32)
    labels = np.array([0, 0, 1, 1])
    predicted = probs.argmax(1)
    return Analysis(
        model_version="deconfusion-test", items=["a.png", "b.png", "c.png", "d.png"], class_names=["cat", "dog"],
        task_ids=np.array([1, 2, 3, 4]), splits=np.array(["train", "train", "val", "train"]), labels=labels,
        pred_probs=probs, predicted=predicted, mismatch=np.array([0.5, 0.8, 0.5, 0.6], np.float32),
        error_score=np.array([0.1, 0.9, 0.2, 0.7], np.float32), is_candidate=np.array([False, True, False, True]),
        knn_disagreement=np.zeros(4, np.float32), consensus=np.array([0, 1, 0, 0.5], np.float32),
        duplicate_group=np.array([-1, -1, 2, 2]), neighbors=np.array([[1], [0], [3], [2]]),
        map_xy=np.array([[np.nan, np.nan], [0.5, 0.5], [np.nan, np.nan], [0.5, 0.5]], np.float32),
        representatives=np.array([0, 2]), thumbs=np.zeros((4, 8, 8, 1), np.uint8),
        cells=[{"label": 0, "predicted": 1, "count": 1, "share_of_row": 0.5, "mean_mismatch": 0.8,
                "score_wrong": 0.8, "saturation": 1.0, "histogram": [0, 0, 0, 1, 0], "interpretation_error": False,
                "has_duplicates": False, "row": 0, "column": 0}],
        duplicates=[{"a": 2, "b": 3, "kind": "near", "ssim": 0.97, "cross_split": True}],
        summary={"images": 4}, params={"folds": 2})


def test_save_load_round_trip_is_lossless(tmp_path):
    original = tiny_analysis()
    loaded = load(save(original, tmp_path / "run"))
    for name in ("labels", "pred_probs", "error_score", "is_candidate", "duplicate_group", "map_xy", "thumbs"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name))
    assert (loaded.items, loaded.cells, loaded.duplicates) == (original.items, original.cells, original.duplicates)
    assert loaded.cell_name(1) == "cat → dog" and loaded.cell_name(0) == ""
    assert loaded.aspects is None  # an analysis without them (as saved before they existed) shows thumbnails as they are
    original.aspects = np.array([1.0, 0.75, 1.5, 1.0], np.float32)
    np.testing.assert_array_equal(load(save(original, tmp_path / "run2")).aspects, original.aspects)


def test_loading_reads_no_thumbnail_until_a_view_draws_one(tmp_path):
    # Every annotation webhook loads the analysis: at 20,000 photos the thumbnails are 245 MB.
    original = tiny_analysis()
    original.thumbs = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8, 1)
    loaded = load(save(original, tmp_path / "run"))
    assert isinstance(loaded.thumbs, np.memmap)
    np.testing.assert_array_equal(loaded.thumbs[2], original.thumbs[2])


def test_an_analysis_saved_with_its_thumbnails_in_the_arrays_still_loads(tmp_path):
    original = tiny_analysis()
    original.thumbs = np.full((4, 8, 8, 1), 7, np.uint8)
    folder = save(original, tmp_path / "run")
    with np.load(folder / "arrays.npz") as arrays:
        older = {**arrays, "thumbs": original.thumbs}
    np.savez_compressed(folder / "arrays.npz", **older)
    (folder / "thumbs.npy").unlink()
    np.testing.assert_array_equal(load(folder).thumbs, original.thumbs)


def test_unknown_schema_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ArtefactError, match="run an analysis first"):
        load(tmp_path)
    folder = save(tiny_analysis(), tmp_path / "run")
    meta = json.loads((folder / "analysis.json").read_text())
    (folder / "analysis.json").write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(ArtefactError, match="schema version 99"):
        load(folder)


def test_exports_follow_the_documented_columns(tmp_path):
    write_exports(tiny_analysis(), tmp_path)
    with open(tmp_path / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SCORES_COLUMNS
    assert rows[1]["cell"] == "cat → dog" and rows[1]["is_candidate"] == "1" and rows[1]["label"] == "cat"
    with open(tmp_path / "cells.csv", newline="") as fh:
        assert tuple(next(csv.reader(fh))) == CELLS_COLUMNS
    with open(tmp_path / "duplicates.csv", newline="") as fh:
        dup = next(csv.DictReader(fh))
    assert (dup["item_a"], dup["item_b"], dup["kind"], dup["cross_split"]) == ("c.png", "d.png", "near", "1")
    assert (tmp_path / "embedding" / "000-001.csv").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["model_version"] == "deconfusion-test"
