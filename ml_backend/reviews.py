"""Reviewers' verdicts as input to an analysis: one code path for ``analyze --verdicts`` and
for the service, which turns its stored verdicts into the same :class:`Review` records.

Verdicts and what an analysis does with them:

- ``confirmed``: the given label is right; it trains with CONFIRMED_WEIGHT and is never a
  candidate again;
- ``relabeled``: the label after review replaces the given one; trusted like a confirmed one;
- ``removed``: the image is left out of the analysis;
- ``ambiguous``: kept out of training (weight 0), still scored, not a candidate again.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import unicodedata
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .dataset import ImageDataset
from .errors import DatasetError

log = logging.getLogger(__name__)

VERDICTS = ("confirmed", "relabeled", "removed", "ambiguous")
COLUMNS = ("item", "verdict", "label")


@dataclass(frozen=True)
class ReviewOutcome:
    """What the reviews say about each image of the data set an analysis gets (N images).

    reviewed : (N,) bool, a reviewer decided; never a candidate again.
    verdicts : (N,) int8, 1 = the label was wrong (relabeled), 0 = right (confirmed), -1 = no
        verdict on the label (unreviewed or ambiguous): what the verifier learns from.
    given_labels : (N,) int64, each image's label before review.
    """

    reviewed: np.ndarray
    verdicts: np.ndarray
    given_labels: np.ndarray


@dataclass(frozen=True)
class Review:
    """One reviewer's verdict on one image; ``label`` is the label after review ('' when the
    verdict needs none: removed, ambiguous); ``given`` the label the reviewer judged, when the
    data set already carries the label after review (Label Studio's newest annotation is the
    reviewer's); '' when the data set's label is the one judged (a folder and a verdicts file)."""

    verdict: str
    label: str = ""
    given: str = ""


def read_verdicts(path: str | os.PathLike, dataset: ImageDataset) -> dict[str, Review]:
    """``{item: Review}`` of ``dataset``'s images from a UTF-8 CSV (Excel's byte-order mark or not)
    with columns item, verdict, label. Every bad row raises DatasetError naming the file, the row
    (its line in the file) and what to change; an item may appear once. A row on an image the
    loader skipped (unreadable) is left out with a warning: one bad image never stops an analysis."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return _read_rows(path, csv.DictReader(fh), dataset)
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save it as CSV UTF-8") from None
    except OSError as exc:
        raise DatasetError(f"verdicts file {path}: {exc.strerror or exc}") from None


def _read_rows(path: str | os.PathLike, reader: csv.DictReader, dataset: ImageDataset) -> dict[str, Review]:
    classes = set(dataset.class_names)
    label_of = {item: dataset.class_names[k] for item, k in zip(dataset.items, dataset.labels)}
    skipped = {s.item: s.reason for s in dataset.skipped}
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]  # "item, verdict, label"
    missing = [c for c in COLUMNS if c not in reader.fieldnames]
    if missing:
        raise DatasetError(f"{path}: no column {', '.join(missing)}; the header must be {','.join(COLUMNS)}")
    reviews: dict[str, Review] = {}
    seen: set[str] = set()
    for row in reader:
        where = f"{path}, row {reader.line_num}"  # the line in the file: blank lines count, as in an editor
        item, verdict, label = (unicodedata.normalize("NFC", (row[c] or "").strip()) for c in COLUMNS)  # short: None
        if not (item or verdict or label):
            continue  # ",," rows: what a spreadsheet writes for formatted empty rows
        if item not in label_of and item not in skipped:
            raise DatasetError(f"{where}: item {item!r} is not in the data set (use the item names of scores.csv)")
        if item in seen:
            raise DatasetError(f"{where}: item {item!r} has a verdict already; keep one row per item")
        seen.add(item)
        if verdict not in VERDICTS:
            raise DatasetError(f"{where}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if verdict in ("confirmed", "relabeled") and label not in classes:
            found = f"label {label!r} is not a class of the data set" if label else "no label"
            raise DatasetError(f"{where}: {found}; {verdict} needs the label after review, "
                               f"one of {', '.join(dataset.class_names)}")
        if verdict == "confirmed" and item in label_of and label != label_of[item]:
            raise DatasetError(f"{where}: {item!r} is labeled {label_of[item]!r}, not {label!r}; a label the "
                               "review changed is 'relabeled'")
        if item in skipped:
            log.warning("%s: %s was skipped when loading (%s); its verdict is left out", where, item, skipped[item])
            continue
        reviews[item] = Review(verdict, label)
    return reviews


def apply_reviews(dataset: ImageDataset, reviews: Mapping[str, Review],
                  confirmed_weight: float) -> tuple[ImageDataset, ReviewOutcome]:
    """The data set to analyse under ``reviews`` and what the reviews say about its images.

    Removed images are left out; relabeled ones take their new label; confirmed and relabeled
    ones train with ``confirmed_weight``, ambiguous ones with 0. A confirmed label that is not
    the image's label raises DatasetError (the label changed after the review), and so do
    verdicts that leave fewer than two classes to train on.
    """
    labels, weights, given = dataset.labels.copy(), dataset.weights.copy(), dataset.labels.copy()
    reviewed, keep = np.zeros(len(dataset), bool), np.ones(len(dataset), bool)
    verdicts = np.full(len(dataset), -1, dtype=np.int8)
    index_of = {name: k for k, name in enumerate(dataset.class_names)}
    for i, item in enumerate(dataset.items):
        review = reviews.get(item)
        if review is None:
            continue
        reviewed[i] = True
        if review.verdict == "removed":
            keep[i] = False
        elif review.verdict == "ambiguous":
            weights[i] = 0.0
        else:
            if review.verdict == "confirmed" and index_of[review.label] != labels[i]:
                raise DatasetError(f"{item}: confirmed as {review.label!r} but labeled "
                                   f"{dataset.class_names[labels[i]]!r}; give it as relabeled")
            given[i] = index_of.get(review.given, labels[i])
            judged_gone = review.given and review.given not in index_of  # a class renamed since: no lesson
            verdicts[i] = -1 if judged_gone else int(index_of[review.label] != given[i])
            labels[i], weights[i] = index_of[review.label], confirmed_weight
    if not keep.any():
        raise DatasetError("every image is marked removed; nothing is left to analyse")
    left = np.unique(labels[keep & (weights > 0)])
    if left.size < 2:  # the same rule as for the labels as given (dataset._check_usable)
        found = f"only class {dataset.class_names[left[0]]!r} has" if left.size else "no class has"
        raise DatasetError(f"after the verdicts {found} images to train on (removed and ambiguous ones train on "
                           "nothing); keep or relabel images of at least two classes so the model can disagree "
                           "with a label")
    outcome = ReviewOutcome(reviewed[keep], verdicts[keep], given[keep])
    if keep.all():  # the images stay shared: copying them would double the largest array for nothing
        return dataclasses.replace(dataset, labels=labels, weights=weights), outcome
    return dataclasses.replace(dataset.subset(keep), labels=labels[keep], weights=weights[keep]), outcome
