"""The analysis artefact: everything one run found, versioned and stored on disk.

Symbols: N images, K classes, S similar images kept per image.

On disk a run is one folder:
- ``analysis.json``: schema version, model version, class names, cells, duplicates, summary, params;
- ``arrays.npz``: the per-image arrays listed on :class:`Analysis` but the thumbnails;
- ``thumbs.npy``: the thumbnails, memory-mapped when loaded: an annotation webhook reads no pixel
  and an evidence image reads the few it draws (older runs keep them in ``arrays.npz``);
- readable exports (``scores.csv``, ``cells.csv``, ``duplicates.csv``, ``embedding/``,
  ``summary.json``) written by :func:`write_exports`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtefactError

SCHEMA_VERSION = 1
EVIDENCE_KEY = "evidence__"  # arrays.npz prefix of Analysis.evidence entries (absent in older runs)
THUMBS_FILE = "thumbs.npy"
ARRAY_FIELDS = (
    "task_ids", "splits", "labels", "pred_probs", "predicted", "mismatch", "error_score", "is_candidate",
    "knn_disagreement", "consensus", "duplicate_group", "neighbors", "map_xy", "representatives",
)


@dataclass
class Analysis:
    """One analysis of a labeled image set.

    items : list of str (N,), stable image ids (relative path or ``task-<id>``).
    class_names : list of str (K,), sorted.
    task_ids : (N,) int64, Label Studio task id or -1.
    splits : (N,) str, "train" | "val".
    labels : (N,) int64, the human label.
    pred_probs : (N, K) float32, out-of-sample class probabilities.
    predicted : (N,) int64, argmax of ``pred_probs``.
    mismatch : (N,) float32 in [1/K, 1], the paper's eq. 1; higher = more confidently misclassified.
    error_score : (N,) float32 in [0, 1], higher = label more likely wrong; ranks every image.
    is_candidate : (N,) bool, flagged for review (top estimated-number-of-errors by error_score).
    knn_disagreement : (N,) float32 in [0, 1], share of embedding neighbours whose label differs.
    consensus : (N,) float32 in [0, 1], share of fold models that predict a class other than the label.
    duplicate_group : (N,) int64, id of the image's duplicate group (lowest member index), -1 if none.
    neighbors : (N, S) int64, most similar other images (embedding space), -1 padded.
    map_xy : (N, 2) float32, inspection-map coordinates in [0, 1] within the image's cell, NaN if the
        image is in no off-diagonal cell.
    representatives : (K,) int64, image with the highest softmax for each class, -1 if none.
    thumbs : (N, h, w, C) uint8, small copies for views.
    cells : list of dict, the overview list's off-diagonal cells in reading order
        (keys documented in ``detectors.overview``).
    duplicates : list of dict with ``a``, ``b`` (image indices), ``kind`` (exact|near), ``ssim``,
        ``measure`` (the similarity that confirmed it: pixels | ssim | aligned_pixels) and ``similarity`` (its value),
        ``cross_split``.
    summary : dict, counts, estimated label-error rate, accuracy estimate, skipped files, timings.
    params : dict, every setting the run used.
    evidence : dict of str -> (N,) float32 in [0, 1], each evidence source on its own (higher =
        label more likely wrong): ``doubt_<backbone>`` = 1 - label quality of that view;
        ``doubt_without_verifier`` = the error score before the verifier re-ranked it (only when it did).
        Exported as scores.csv columns.
    reviewed : (N,) bool, a reviewer's verdict was an input (``reviews``); never a candidate.
        All False when not given (and in analyses saved before the field existed).
    aspects : (N,) float32, each original image's width / height, so views undo the working
        copy's squeeze; None (and in older analyses): the thumbnails' own shape.
    """

    model_version: str
    items: list[str]
    class_names: list[str]
    task_ids: np.ndarray
    splits: np.ndarray
    labels: np.ndarray
    pred_probs: np.ndarray
    predicted: np.ndarray
    mismatch: np.ndarray
    error_score: np.ndarray
    is_candidate: np.ndarray
    knn_disagreement: np.ndarray
    consensus: np.ndarray
    duplicate_group: np.ndarray
    neighbors: np.ndarray
    map_xy: np.ndarray
    representatives: np.ndarray
    thumbs: np.ndarray
    cells: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    reviewed: np.ndarray | None = None
    aspects: np.ndarray | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.reviewed is None:
            self.reviewed = np.zeros(len(self.items), dtype=bool)

    def __len__(self) -> int:
        return len(self.items)

    def cell_name(self, i: int) -> str:
        """``"a → b"`` for off-diagonal images, ``""`` where label and model agree."""
        a, b = int(self.labels[i]), int(self.predicted[i])
        return "" if a == b else self.cell_name_of(a, b)

    def cell_name_of(self, label: int, predicted: int) -> str:
        return f"{self.class_names[label]} → {self.class_names[predicted]}"

    def cell_members(self, label: int, predicted: int) -> np.ndarray:
        """Indices of images labeled ``label`` and predicted ``predicted``, most likely errors first."""
        idx = np.flatnonzero((self.labels == label) & (self.predicted == predicted))
        return idx[np.argsort(-self.error_score[idx], kind="stable")]

    def together_members(self, cell: dict) -> np.ndarray:
        """The part of a flagged cell to relabel at once (``overview_cells``' ``together``), most
        likely errors first; empty for other cells."""
        return self.cell_members(cell["label"], cell["predicted"])[:cell.get("together", 0)]

    def index_of_task(self) -> dict[int, int]:
        return {int(t): i for i, t in enumerate(self.task_ids) if t >= 0}


def save(analysis: Analysis, folder: str | os.PathLike) -> Path:
    """Write ``analysis.json``, ``arrays.npz`` and ``thumbs.npy`` atomically enough: arrays first, json last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / (THUMBS_FILE + ".tmp"), "wb") as out:
        np.save(out, analysis.thumbs)
    (folder / (THUMBS_FILE + ".tmp")).replace(folder / THUMBS_FILE)
    np.savez_compressed(folder / "arrays.npz", **{name: getattr(analysis, name) for name in ARRAY_FIELDS},
                        reviewed=analysis.reviewed,
                        **({} if analysis.aspects is None else {"aspects": analysis.aspects}),
                        **{EVIDENCE_KEY + name: values for name, values in analysis.evidence.items()})
    meta = {
        "schema_version": analysis.schema_version,
        "model_version": analysis.model_version,
        "items": analysis.items,
        "class_names": analysis.class_names,
        "cells": analysis.cells,
        "duplicates": analysis.duplicates,
        "summary": analysis.summary,
        "params": analysis.params,
    }
    tmp = folder / "analysis.json.tmp"
    tmp.write_text(json.dumps(_jsonable(meta), ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(folder / "analysis.json")
    return folder


def load(folder: str | os.PathLike) -> Analysis:
    folder = Path(folder)
    meta_path = folder / "analysis.json"
    if not meta_path.exists():
        raise ArtefactError(f"{folder}: no analysis.json; run an analysis first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtefactError(
            f"{folder}: analysis schema version {version} is not supported (expected {SCHEMA_VERSION}); "
            "re-run the analysis")
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        data = {name: arrays[name] for name in ARRAY_FIELDS}
        evidence = {key[len(EVIDENCE_KEY):]: arrays[key] for key in arrays.files if key.startswith(EVIDENCE_KEY)}
        reviewed = arrays["reviewed"] if "reviewed" in arrays.files else None
        aspects = arrays["aspects"] if "aspects" in arrays.files else None
        thumbs = arrays["thumbs"] if "thumbs" in arrays.files else np.load(folder / THUMBS_FILE, mmap_mode="r")
    return Analysis(
        model_version=meta["model_version"], items=meta["items"], class_names=meta["class_names"],
        cells=meta["cells"], duplicates=meta["duplicates"], summary=meta["summary"], params=meta["params"],
        schema_version=version, evidence=evidence, reviewed=reviewed, aspects=aspects, thumbs=thumbs, **data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


SCORES_COLUMNS = (
    "item", "split", "label", "predicted", "p_label", "p_predicted", "mismatch_score", "error_score",
    "is_candidate", "knn_disagreement", "consensus", "cell", "reviewed",
)
CELLS_COLUMNS = (
    "label", "predicted", "count", "share_of_row", "mean_mismatch", "score_wrong", "saturation",
    "histogram", "interpretation_error", "together", "has_duplicates", "row", "column",
)


def write_exports(analysis: Analysis, folder: str | os.PathLike) -> None:
    """The documented, readable outputs of ``analyze``: CSVs, per-cell maps and summary.json."""
    folder = Path(folder)
    (folder / "embedding").mkdir(parents=True, exist_ok=True)
    for stale in (folder / "embedding").glob("[0-9][0-9][0-9]-[0-9][0-9][0-9].csv"):  # an earlier run's cells
        stale.unlink()
    names = analysis.class_names
    rows = np.arange(len(analysis))
    with open(folder / "scores.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        evidence = sorted(analysis.evidence)
        out.writerow(SCORES_COLUMNS + tuple(evidence))
        p_label = analysis.pred_probs[rows, analysis.labels]
        p_pred = analysis.pred_probs[rows, analysis.predicted]
        for i in rows:
            out.writerow([
                analysis.items[i], analysis.splits[i], names[analysis.labels[i]], names[analysis.predicted[i]],
                f"{p_label[i]:.6f}", f"{p_pred[i]:.6f}", f"{analysis.mismatch[i]:.6f}",
                f"{analysis.error_score[i]:.6f}", int(analysis.is_candidate[i]),
                f"{analysis.knn_disagreement[i]:.6f}", f"{analysis.consensus[i]:.6f}", analysis.cell_name(i),
                int(analysis.reviewed[i]), *(f"{analysis.evidence[name][i]:.6f}" for name in evidence),
            ])
    with open(folder / "cells.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(CELLS_COLUMNS)
        for cell in analysis.cells:
            out.writerow([
                names[cell["label"]], names[cell["predicted"]], cell["count"], f"{cell['share_of_row']:.6f}",
                f"{cell['mean_mismatch']:.6f}", f"{cell['score_wrong']:.6f}", f"{cell['saturation']:.6f}",
                " ".join(str(c) for c in cell["histogram"]), int(cell["interpretation_error"]),
                cell.get("together", 0), int(cell["has_duplicates"]), cell["row"], cell["column"],
            ])
    with open(folder / "duplicates.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(("item_a", "item_b", "kind", "ssim", "cross_split", "measure", "similarity"))
        for pair in analysis.duplicates:
            out.writerow([analysis.items[pair["a"]], analysis.items[pair["b"]], pair["kind"],
                          f"{pair['ssim']:.6f}", int(pair["cross_split"]), pair.get("measure", "ssim"),
                          f"{pair.get('similarity', pair['ssim']):.6f}"])
    for cell in analysis.cells:
        members = analysis.cell_members(cell["label"], cell["predicted"])
        path = folder / "embedding" / f"{cell['label']:03d}-{cell['predicted']:03d}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(("item", "x", "y", "mismatch_score", "split"))
            for i in members:
                out.writerow([analysis.items[i], f"{analysis.map_xy[i, 0]:.5f}", f"{analysis.map_xy[i, 1]:.5f}",
                              f"{analysis.mismatch[i]:.6f}", analysis.splits[i]])
    (folder / "summary.json").write_text(
        json.dumps(_jsonable({"model_version": analysis.model_version, **analysis.summary,
                              "params": analysis.params}), ensure_ascii=False, indent=1), encoding="utf-8")
