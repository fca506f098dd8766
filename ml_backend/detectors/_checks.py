"""Input checks shared by the detectors. numpy only.

One function, :func:`fail`, builds every message: the parameter, the caller, what is
allowed and what was received, so every error reads the same way and names a fix.
Wrong kind (not an array, wrong dtype) raises TypeError; wrong value (shape, range,
NaN) raises ValueError. Each public detector validates once at its entry with these
helpers and then calls private ``_compute_*`` code that trusts its inputs.
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np

ROW_SUM_TOLERANCE = 1e-3  # float16/float32 softmax outputs sum to 1 within this


def fail(param: str, caller: str, allowed: str, received: object, kind: type[Exception] = ValueError) -> NoReturn:
    """Raise ``kind`` with the one message format every detector uses."""
    raise kind(f"{caller}: parameter {param!r} must be {allowed}; got {received}")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype} and shape {value.shape}"
    return type(value).__name__


def array_checked(value, name: str, caller: str, *, ndim: int, shape: str, finite: bool = True,
                  require_ndarray: bool = False) -> np.ndarray:
    """A real-valued array with ``ndim`` dimensions (and no NaN/inf when ``finite``).

    ``shape`` is the documented shape, e.g. ``"(N, D)"``, used in messages.
    """
    if require_ndarray and not isinstance(value, np.ndarray):
        fail(name, caller, f"a numpy array of shape {shape}", _describe(value), TypeError)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):  # ragged nested lists
        fail(name, caller, f"an array of shape {shape}", _describe(value), TypeError)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        fail(name, caller, f"a real-valued (int or float) array of shape {shape}", f"dtype {arr.dtype}", TypeError)
    if arr.ndim != ndim:
        fail(name, caller, f"{ndim}-D of shape {shape}", f"shape {arr.shape}")
    if finite and arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        fail(name, caller, "finite (no NaN or inf); drop or repair those rows first",
             f"{arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    return arr


def pred_probs_checked(pred_probs, caller: str, name: str = "pred_probs") -> np.ndarray:
    """(N, K) float64 view of softmax outputs: N >= 1, K >= 2, rows non-negative summing to 1."""
    probs = array_checked(pred_probs, name, caller, ndim=2, shape="(N, K)", require_ndarray=True)
    if probs.shape[0] < 1 or probs.shape[1] < 2:
        fail(name, caller, "of shape (N, K) with N >= 1 images and K >= 2 classes", f"shape {probs.shape}")
    return _rows_checked(probs.astype(np.float64, copy=False), name, caller)


def fold_probs_checked(fold_probs, caller: str, name: str = "fold_probs") -> np.ndarray:
    """(F, N, K) float64 view: F >= 1 fold models' softmax outputs for every image."""
    probs = array_checked(fold_probs, name, caller, ndim=3, shape="(F, N, K)", require_ndarray=True)
    if min(probs.shape[:2]) < 1 or probs.shape[2] < 2:
        fail(name, caller, "of shape (F, N, K) with F >= 1, N >= 1 and K >= 2", f"shape {probs.shape}")
    _rows_checked(probs.reshape(-1, probs.shape[2]), name, caller)
    return probs.astype(np.float64, copy=False)


def _rows_checked(probs: np.ndarray, name: str, caller: str) -> np.ndarray:
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if probs.min() < -ROW_SUM_TOLERANCE or abs(sums[worst] - 1.0) > ROW_SUM_TOLERANCE:
        fail(name, caller, "non-negative rows summing to 1 (softmax outputs; apply scipy.special.softmax "
             "to logits)", f"row {worst} sums to {sums[worst]:.4f}, smallest value {probs.min():.4f}")
    return probs


def labels_checked(labels, n: int, k: int | None, caller: str, name: str = "labels") -> np.ndarray:
    """(n,) int64 class indices in [0, k) (in [0, inf) when ``k`` is None)."""
    labels = np.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        fail(name, caller, "integer class indices (map class names to 0..K-1 first)", f"dtype {labels.dtype}",
             TypeError)
    if labels.shape != (n,):
        fail(name, caller, f"of shape ({n},), one per image, to match the other inputs", f"shape {labels.shape}")
    high = "K-1" if k is None else k - 1
    if n and (labels.min() < 0 or (k is not None and labels.max() >= k)):
        fail(name, caller, f"class indices in [0, {high}]", f"values {labels.min()}..{labels.max()}")
    return labels.astype(np.int64, copy=False)


def length_checked(name: str, values, n: int, caller: str) -> np.ndarray:
    """Any array-like with one entry per image."""
    values = np.asarray(values)
    if values.ndim == 0 or len(values) != n:
        fail(name, caller, f"of length {n} (one entry per image)",
             f"length {len(values)}" if values.ndim else "a scalar")
    return values


def scores_checked(name: str, values, n: int, caller: str, *, low: float | None = None,
                   high: float | None = None) -> np.ndarray:
    """(n,) finite float64 per-image scores, optionally within [low, high]."""
    arr = array_checked(values, name, caller, ndim=1, shape=f"({n},)").astype(np.float64, copy=False)
    if arr.shape != (n,):
        fail(name, caller, f"of shape ({n},), one score per image", f"shape {arr.shape}")
    if arr.size and ((low is not None and arr.min() < low - 1e-6) or (high is not None and arr.max() > high + 1e-6)):
        fail(name, caller, f"scores in [{low}, {high}]", f"values {arr.min():.4g}..{arr.max():.4g}")
    return arr


def int_checked(name: str, value, caller: str, *, minimum: int = 1) -> int:
    """A Python or numpy int (not bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        fail(name, caller, f"an int >= {minimum}", f"{value!r} ({type(value).__name__})", TypeError)
    if value < minimum:
        fail(name, caller, f"an int >= {minimum}", value)
    return int(value)


def float_checked(name: str, value, caller: str, *, low: float, high: float, low_open: bool = False,
                  high_open: bool = False) -> float:
    """A real number in the interval [low, high] (open ends as requested)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        fail(name, caller, "a real number", f"{value!r} ({type(value).__name__})", TypeError)
    value = float(value)
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if (not np.isfinite(value) or value < low or value > high or (low_open and value == low)
            or (high_open and value == high)):
        fail(name, caller, f"in {interval}", value)
    return value
