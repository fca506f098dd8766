"""Input checks shared by the detectors. One function builds every message: the parameter,
the caller, what is allowed and what was received. numpy only."""

from __future__ import annotations

import numpy as np


def fail(param: str, caller: str, allowed: str, received: object, kind: type[Exception] = ValueError) -> None:
    raise kind(f"{caller}: parameter {param!r} must be {allowed}; got {received}")


def pred_probs_checked(pred_probs, caller: str) -> np.ndarray:
    if not isinstance(pred_probs, np.ndarray):
        fail("pred_probs", caller, "a numpy array of shape (N, K)", type(pred_probs).__name__, TypeError)
    if pred_probs.ndim != 2 or pred_probs.shape[1] < 2:
        fail("pred_probs", caller, "2-D with K >= 2 columns", f"shape {pred_probs.shape}")
    sums = pred_probs.sum(axis=1)
    if pred_probs.size and (pred_probs.min() < -1e-6 or np.abs(sums - 1).max() > 1e-3):
        fail("pred_probs", caller, "non-negative rows summing to 1 (softmax outputs)",
             f"row sums {sums.min():.4f}..{sums.max():.4f}, min value {pred_probs.min():.4f}")
    return pred_probs.astype(np.float64, copy=False)


def labels_checked(labels, n: int, k: int, caller: str) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        fail("labels", caller, "integer class indices", f"dtype {labels.dtype}", TypeError)
    if labels.shape != (n,):
        fail("labels", caller, f"shape ({n},) to match the other inputs", f"shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        fail("labels", caller, f"in [0, {k})", f"values {labels.min()}..{labels.max()}")
    return labels.astype(np.int64, copy=False)


def length_checked(name: str, values, n: int, caller: str) -> np.ndarray:
    values = np.asarray(values)
    if len(values) != n:
        fail(name, caller, f"of length {n} (one per image)", f"length {len(values)}")
    return values


def positive_int_checked(name: str, value, caller: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        fail(name, caller, "an int", type(value).__name__, TypeError)
    if value < minimum:
        fail(name, caller, f">= {minimum}", value)
    return int(value)

