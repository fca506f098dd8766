"""Out-of-sample class probabilities and embeddings by K-fold cross-fitting.

Symbols: N images, K classes, F folds, D embedding width, (H, W, C) image shape.

Every image is scored by the one fold model that never trained on it, so a model that
memorised a wrong label cannot vouch for it. Folds are stratified over all images
(train and val alike) and depend only on the labels and the seed, so every view of one
analysis uses the same folds. Views (:func:`choose_views`), each a backbone:

- ``small_cnn``, for images up to 64 px: a small CNN trained from scratch,
  ``epochs = clip(ceil(150_000 / training images), 3, 40)`` (MNIST, 52,500 training images
  per fold: 3 epochs);
- frozen ImageNet-pretrained backbones (EfficientNet-Lite0 and Lite2, from the offline
  weights packages), for colour images of any size and for large grey ones: their pooled
  features are computed once (small colour images upscaled to 160 px, small grey ones to
  64 px) and a multinomial logistic regression head (L-BFGS, L2 penalty HEAD_L2 on
  standardised features) is fitted per fold.

Cores: small-CNN fold models train side by side in threads (min(F, cores) at once, one
torch thread each on a 2-core machine), see :func:`_worker_plan`. MNIST (70,000 images,
4 folds, 3 epochs) costs about 210 CPU-seconds in all (under 2 minutes on two idle cores)
and reaches 99.1% out-of-fold accuracy.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..vocabulary import Progress
from .ensemble import INFERENCE_BATCH, Ensemble, check_backbone, is_pretrained, resolve_device, to_tensor
from .nets import SMALL_IMAGE_SIDE, FeatureHead, HeadOnFeatures, PretrainedFeatures, SmallCNN, input_side

log = logging.getLogger("ml_backend.model")

HEAD_CHUNK = 8192  # images per head forward pass when scoring all images
# The pretrained views of 'auto' for photos (beside a CNN on small ones). Lite1/Lite2 alone cost 1.5x
# the time of Lite0 for no better CIFAR features, but as a second view beside Lite0 Lite2 adds what one
# network misses (CIFAR-10N, cached features, combined AP aggre 0.649 -> 0.682, random1 0.801 -> 0.829;
# at 224 px without the CNN 0.643 -> 0.719 and 0.795 -> 0.846; Lite0+Lite1+Lite2 0.687 for 1.5x more
# time; Fashion-MNIST corruption at 64 px 0.610 -> 0.629). Lite0 comes first: it explains images.
PRETRAINED_PAIR = ("efficientnet_lite0", "efficientnet_lite2")
SMALL_CNN_SAMPLES = 150_000  # training images seen per fold model (auto epochs)
SMALL_CNN_EPOCHS = (3, 40)
# A first look (the pipeline's question: does a lone CNN already tell grey images apart?) sees a
# third of those images, at least one epoch: MNIST 3 epochs -> 1. Sets small enough for the most
# epochs (under 3,750 training images) train them at once: that costs little, and fewer passes
# change their scores (the demo's 1,800 digits at 38 epochs: 34 of 35 swaps and 4 of 5 slips listed).
FIRST_LOOK_SAMPLES = SMALL_CNN_SAMPLES // 3
SMALL_CNN_LR = 3e-3
SMALL_CNN_WEIGHT_DECAY = 5e-4
MAX_SHIFT = 2  # random translation (pixels) used as augmentation
HEAD_ITERATIONS = 50  # L-BFGS iterations per head (the 'epochs' of a pretrained view)
# L2 penalty (on the mean loss) of the heads: on CIFAR-10N photos 0.1 gave 78% out-of-fold
# accuracy against 70% at 0.001 and 75% at 1.0 (heads fit to noisy labels need a strong prior).
HEAD_L2 = 0.1
LOG_EVERY_S = 10.0
POLL_S = 0.25  # how often the caller's thread reports the fold workers' progress
SINGLE_THREAD_VALUES = 5_000_000  # N*H*W*C below which one thread is faster than several


@dataclass
class CrossFitResult:
    """What cross-fitting learned about every image.

    pred_probs : (N, K) float32, out-of-fold softmax: row i comes from the fold model that
        did not train on image i. Rows sum to 1.
    fold_probs : (F, N, K) float32, every fold model's softmax on every image (model consensus).
    fold_of : (N,) int64 in [0, F), the fold that held image i out.
    embeddings : (F, N, D) float32, penultimate features of every fold model on every image
        (for a pretrained backbone the frozen features, the same for every fold: a broadcast view).
    backbone : 'small_cnn' or a pretrained backbone. epochs : epochs each fold model trained
        (L-BFGS iterations for a pretrained view's heads).
    seconds : wall time of the whole cross-fit.
    """

    pred_probs: np.ndarray
    fold_probs: np.ndarray
    fold_of: np.ndarray
    embeddings: np.ndarray
    backbone: str
    epochs: int
    seconds: float


# --------------------------------------------------------------------------- rules
def choose_views(image_shape: tuple[int, int, int], requested: str = "auto") -> list[str]:
    """The backbones to cross-fit, first view first (it explains images: saliency maps).

    requested : 'auto', 'small_cnn', a pretrained backbone (``efficientnet_lite0/1/2``,
        ``torchvision:<arch>``, ``hub:<repo>:<model>``), or several joined by '+'
        (e.g. 'small_cnn+efficientnet_lite2'). 'auto': grey images up to 64 px (digits)
        -> ['small_cnn']; colour images up to 64 px (CIFAR-like photos) -> ['small_cnn',
        'efficientnet_lite0', 'efficientnet_lite2'] (PRETRAINED_PAIR); larger images -> the two
        pretrained views (a CNN from scratch on photos is weak and slow on a CPU). Measured on CIFAR-10N:
        the Lite0 view alone ranks errors with AP 0.62, the CNN alone 0.43, both (with kNN and consensus)
        0.65, with Lite2 as a third view 0.68; at 224 px, as larger photos are seen, Lite0 alone 0.643,
        with Lite2 0.719 (majority-vote labels; one annotator's 0.795 -> 0.846). For grey images the
        pipeline adds the two pretrained views only when the CNN turns out to confuse classes beyond
        the label noise (``pipeline.CONFUSION_FOR_PRETRAINED``): Fashion-MNIST yes, digits no.
    """
    if requested != "auto":
        return [check_backbone(name) for name in requested.split("+")]
    small = max(image_shape[:2]) <= SMALL_IMAGE_SIDE
    if small and image_shape[2] == 1:
        return ["small_cnn"]
    return ["small_cnn", *PRETRAINED_PAIR] if small else list(PRETRAINED_PAIR)


def choose_backbone(num_images: int, image_shape: tuple[int, int, int], requested: str = "auto") -> str:
    """The one backbone :func:`cross_fit` and :func:`train_single` train: ``requested``, or for
    'auto' the first view :func:`choose_views` picks. ``num_images`` is part of the signature
    so the rule may use it."""
    return choose_views(image_shape, requested)[0]


def auto_epochs(backbone: str, n_train: int, *, first_look: bool = False) -> int:
    """Epochs per fold model for ``n_train`` training images: for the small CNN enough passes
    for small sets, few for large ones (a fixed budget of samples, clipped), so label noise is
    not memorised; for a pretrained view's heads HEAD_ITERATIONS L-BFGS iterations.
    first_look: the small CNN's epochs for FIRST_LOOK_SAMPLES images (at least one), where the
    full budget is under the most epochs."""
    if is_pretrained(backbone):
        return HEAD_ITERATIONS
    low, high = SMALL_CNN_EPOCHS
    epochs = int(np.clip(math.ceil(SMALL_CNN_SAMPLES / max(n_train, 1)), low, high))
    return max(1, math.ceil(FIRST_LOOK_SAMPLES / max(n_train, 1))) if first_look and epochs < high else epochs


def training_size(fold_of: np.ndarray) -> int:
    """Training images of the smallest fold model (the one whose fold is largest): what automatic
    epochs are counted for."""
    return len(fold_of) - int(np.bincount(fold_of).max())


def stratified_folds(labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """(N,) int64 fold per image. Each class is shuffled and dealt round-robin over the folds,
    continuing where the previous class stopped, so fold sizes differ by at most one and a
    class with fewer images than folds simply misses some folds.

    groups : (N,) ids (ints or strings, e.g. pixel hashes), optional. Images with equal ids
    (exact copies) then join the fold of the first of them: a held-out model never trained on a
    copy of the image it scores (two copies labeled differently would otherwise each be scored
    by a model that learned the other). Every other image keeps its fold.
    """
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        fold_of[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    if groups is None:
        return fold_of
    _, first, group = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    return fold_of[first[group.ravel()]]  # each image takes the fold of its group's first image


def _worker_plan(folds: int, images: np.ndarray, device: torch.device) -> tuple[int, int]:
    """(fold models trained side by side, torch threads each) for the small CNN.

    On CPU the folds train in parallel Python threads, min(F, cores) at once, each with
    cores // workers torch threads (one thread each for sets under SINGLE_THREAD_VALUES
    pixel values). Separate models need no thread barriers, so this scales on 2 cores and
    degrades gracefully on a busy machine, where OpenMP threads of one model spin-wait on
    each other (10x slower measured). On a GPU the folds run one after another.
    """
    cores = os.cpu_count() or 1
    if device.type != "cpu":
        return 1, cores
    workers = max(1, min(folds, cores))
    return workers, 1 if images.size < SINGLE_THREAD_VALUES else max(1, cores // workers)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads in this thread; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _main_threads(images: np.ndarray) -> int:
    """Torch threads for work done in the caller's thread: every core (os.cpu_count()), or one
    for sets under SINGLE_THREAD_VALUES pixel values, where thread hand-offs cost more than they save."""
    return 1 if images.size < SINGLE_THREAD_VALUES else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- progress
class _Stopped(Exception):
    """Raised inside a fold worker when another worker (or the progress callback) failed."""


class _Reporter:
    """Counts steps of one stage from any thread (:meth:`tick`) and, in the caller's thread
    (:meth:`flush`), calls ``progress(stage, done, total)`` when the count moved and logs counts
    and ETA at most every LOG_EVERY_S seconds (and once at the end)."""

    def __init__(self, progress: Progress | None, stage: str, total: int,
                 stop: threading.Event | None = None) -> None:
        self.progress, self.stage, self.total, self.stop = progress, stage, max(int(total), 1), stop
        self.start = self.last = time.monotonic()
        self.done = self.reported = 0
        self._lock = threading.Lock()

    def tick(self, n: int = 1) -> None:
        """Count ``n`` finished steps (thread-safe); raises _Stopped once ``stop`` is set."""
        with self._lock:
            self.done = min(self.done + n, self.total)
        if self.stop is not None and self.stop.is_set():
            raise _Stopped

    def flush(self) -> None:
        """Report the count to ``progress`` and the log (call from the caller's thread)."""
        done = self.done
        if done == self.reported:
            return
        self.reported = done
        if self.progress is not None:
            self.progress(self.stage, done, self.total)
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S or done == self.total:
            self.last = now
            elapsed = now - self.start
            log.info("%s: %d/%d (%.0f%%), %.0f s elapsed, ETA %.0f s", self.stage, done, self.total,
                     100.0 * done / self.total, elapsed, elapsed / done * (self.total - done))

    def step(self, n: int = 1) -> None:
        self.tick(n)
        self.flush()


# --------------------------------------------------------------------------- validation
def _check_inputs(images, labels, num_classes, *, folds, epochs, batch_size, weights) -> tuple[np.ndarray, np.ndarray]:
    """Validate cross_fit / train_single arguments; returns labels (N,) int64 and weights (N,) float32."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"images must be a uint8 numpy array (N, H, W, C); got {type(images).__name__} "
                        f"{getattr(images, 'dtype', '')}; convert with np.asarray(images, dtype=np.uint8)")
    if images.ndim != 4 or images.shape[3] not in (1, 3) or min(images.shape[1:3], default=0) < 1:
        raise ValueError(f"images must have shape (N, H, W, C) with C in (1, 3); got {images.shape}; "
                         "add a channel axis to grey images with images[..., None]")
    n = len(images)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers (one per image), got {labels.dtype} array of shape "
                         f"{labels.shape}; map class names to indices 0..K-1 first")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) for num_classes={num_classes}; got values "
                         f"{labels.min()}..{labels.max()}")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= max(n, 2) or n < 2:
        raise ValueError(f"folds must be an integer in [2, N={n}] (N >= 2 images); got folds={folds!r}")
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0 (0 = automatic), got {epochs!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if weights is None:
        return labels.astype(np.int64), np.ones(n, np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or weights.min(initial=0.0) < 0:
        raise ValueError(f"weights must be {n} finite values >= 0 (one per image), got shape {weights.shape}, "
                         f"range {np.nanmin(weights) if weights.size else None}..{np.nanmax(weights) if weights.size else None}")
    return labels.astype(np.int64), weights


# --------------------------------------------------------------------------- training
def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate the batch by one random offset of up to MAX_SHIFT pixels each way, filling with
    the edge: cheap, and enough to stop a small CNN from learning exact pixel positions."""
    dy, dx = (int(v) for v in torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,), generator=generator))
    if dy == dx == 0:
        return x
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    h, w = x.shape[2:]
    top, left = max(-dy, 0), max(-dx, 0)
    return F.pad(x, pad, mode="replicate")[:, :, top:top + h, left:left + w]


def _weighted_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum().clamp_min(1e-6)


def _new_small_cnn(images: np.ndarray, num_classes: int, seed: int) -> SmallCNN:
    """A freshly initialised SmallCNN (seeded), normalised with the mean and std of ``images``
    (n, H, W, C) uint8. Uses the global torch RNG: call from the caller's thread only."""
    torch.manual_seed(seed)
    sample = images[:: max(1, len(images) // 2000)].astype(np.float32) / 255.0
    return SmallCNN(images.shape[3], num_classes, mean=float(sample.mean()), std=float(sample.std()) + 1e-3)


def _train_small_cnn(model: SmallCNN, images: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                     weights: np.ndarray, *, epochs: int, batch_size: int, seed: int, device: torch.device,
                     tick: Callable[[], None]) -> SmallCNN:
    """Train ``model`` on images[rows] ((N, H, W, C) uint8, rows (n,) int64) with labels[rows] and
    weights[rows]: AdamW, one-cycle learning rate, random shifts, dropout from a private generator,
    so several models can train at once in threads. ``tick`` is called after every batch."""
    generator = torch.Generator().manual_seed(seed)
    model.head[0].generator = torch.Generator(device=device).manual_seed(seed + 1)
    model.to(device).train()
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SMALL_CNN_LR, weight_decay=SMALL_CNN_WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=SMALL_CNN_LR, total_steps=epochs * steps_per_epoch)
    y_all, w_all = torch.from_numpy(labels).to(device), torch.from_numpy(weights).to(device)
    for _ in range(epochs):
        for idx in torch.randperm(len(rows), generator=generator).split(batch_size):
            batch = np.sort(rows[idx.numpy()])  # sorted rows read faster from the image array
            x = _shift(to_tensor(images[batch], device), generator)
            at = torch.from_numpy(batch).to(device)
            loss = _weighted_loss(model(x)[0], y_all[at], w_all[at])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            tick()
    model.head[0].generator = None
    return model.eval()


@torch.inference_mode()
def _classify_fold(model: torch.nn.Module, images: np.ndarray, *, device: torch.device,
                   tick: Callable[[], None]) -> tuple[np.ndarray, np.ndarray]:
    """One model on every image, INFERENCE_BATCH images at a time: softmax (N, K) and
    embeddings (N, D), float32. ``tick`` is called after every batch."""
    step = INFERENCE_BATCH["small_cnn"]
    probs, embs = [], []
    for start in range(0, len(images), step):
        logits, emb = model(to_tensor(images[start:start + step], device))
        probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
        embs.append(emb.float().cpu().numpy())
        tick()
    return np.concatenate(probs).astype(np.float32, copy=False), np.concatenate(embs).astype(np.float32, copy=False)


def _fit_fold(model: SmallCNN, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, weights: np.ndarray,
              *, threads: int, steps: _Reporter, **options) -> tuple[np.ndarray, np.ndarray]:
    """Worker job: train one fold model on images[rows], then classify all N images with it."""
    with _threads(threads):
        _train_small_cnn(model, images, rows, labels, weights, tick=steps.tick, **options)
        return _classify_fold(model, images, device=options["device"], tick=steps.tick)


def _run_workers(jobs: list[Callable[[], object]], workers: int, reporters: list[_Reporter],
                 stop: threading.Event) -> list:
    """Run ``jobs`` on ``workers`` threads; meanwhile flush ``reporters`` from this thread every
    POLL_S seconds. The first failure (in a job or in the progress callback) sets ``stop``, which
    makes the other jobs raise _Stopped at their next step, and is re-raised here."""
    with ThreadPoolExecutor(workers, thread_name_prefix="deconfusion-fold") as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
                for reporter in reporters:
                    reporter.flush()
                for future in finished:
                    future.result()
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    return [future.result() for future in futures]


def _train_head(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_classes: int, *,
                iterations: int, seed: int, device: torch.device) -> FeatureHead:
    """Multinomial logistic regression on features (n, D) float32, standardised in place (pass a
    copy the caller no longer needs) with their own statistics: full-batch L-BFGS on the weighted
    cross-entropy plus HEAD_L2 / 2 * ||W||^2. Deterministic for a seed; a second on CPU for 7,500 x 1,392."""
    torch.manual_seed(seed)
    y, w = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (labels, weights))
    z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    head = FeatureHead(features.shape[1], num_classes).to(device)
    head.mean.copy_(z.mean(0))
    head.std.copy_(z.std(0, unbiased=False) + 1e-3)
    z.sub_(head.mean).div_(head.std)
    optimizer = torch.optim.LBFGS(head.linear.parameters(), lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = _weighted_loss(head.linear(z), y, w) + HEAD_L2 / 2 * head.linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.eval()


def fit_heads(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_classes: int,
              fold_of: np.ndarray, *, iterations: int = HEAD_ITERATIONS, seed: int = 0, device: str = "cpu",
              progress: Progress | None = None) -> tuple[list[FeatureHead], np.ndarray]:
    """One head per fold on the features of the images outside it; returns the heads and
    every head's softmax on every image, (F, N, K) float32.

    features : (N, D) float32. labels : (N,) int64. weights : (N,) float32 >= 0, 0 leaves an
    image out of training (the pruning round). fold_of : (N,) int64 in [0, F).
    """
    dev = resolve_device(device)
    folds = int(fold_of.max()) + 1
    reporter = _Reporter(progress, "train", folds)
    heads = []
    for f in range(folds):
        rows = np.flatnonzero((fold_of != f) & (weights > 0))
        heads.append(_train_head(features[rows], labels[rows], weights[rows], num_classes, iterations=iterations,
                                 seed=seed * 1000 + f, device=dev))
        reporter.step()
    fold_probs = np.empty((folds, len(features), num_classes), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(features), HEAD_CHUNK):  # no (N, D) temporary per head
            x = torch.from_numpy(features[start:start + HEAD_CHUNK]).to(dev)
            for f, head in enumerate(heads):
                fold_probs[f, start:start + len(x)] = torch.softmax(head(x), 1).float().cpu().numpy()
    return heads, fold_probs


@torch.inference_mode()
def _pretrained_features(net: PretrainedFeatures, images: np.ndarray, device: torch.device,
                         progress: Progress | None) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, D) float32 frozen pretrained features."""
    step = INFERENCE_BATCH["pretrained"]
    reporter = _Reporter(progress, "features", math.ceil(len(images) / step))
    out = None
    for start in range(0, len(images), step):
        batch = net(to_tensor(images[start:start + step], device)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(images), batch.shape[1]), dtype=np.float32)
        out[start:start + len(batch)] = batch
        reporter.step()
    return out


# --------------------------------------------------------------------------- public
def cross_fit(images: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int = 4, epochs: int = 0,
              seed: int = 0, backbone: str = "auto", device: str = "cpu", batch_size: int = 128,
              weights: np.ndarray | None = None, progress: Progress | None = None,
              class_names: list[str] | None = None, backbone_weights: str = "",
              groups: np.ndarray | None = None, first_look: bool = False) -> tuple[CrossFitResult, Ensemble]:
    """Train ``folds`` models, each on all images but one stratified fold, and score every image.

    images : (N, H, W, C) uint8, C in {1, 3}. labels : (N,) int in [0, K). num_classes : K >= 2.
    folds : {2..N}, default 4. epochs : per fold model, 0 = automatic (see module docstring).
    seed : same seed, same data, same machine -> identical results on CPU.
    backbone : 'auto', 'small_cnn' or a pretrained backbone, see :func:`choose_backbone`.
    device : 'cpu' | 'cuda'. batch_size : training batch (small_cnn).
    backbone_weights : state-dict file of a ``torchvision:<arch>`` backbone ('' = torch cache).
    weights : (N,) float32 >= 0 per-image loss weight (default all 1).
    groups : (N,) ids of images that must share a fold (exact copies), see :func:`stratified_folds`.
    first_look : with automatic epochs, the small CNN sees a third as many images (:func:`auto_epochs`).
    progress : called from the caller's thread as ``progress(stage, done, total)`` with stage in
        {'features', 'train', 'classify'}; done counts batches (heads for pretrained views), reported at
        least every POLL_S seconds while it moves, and always at the end of a stage.
    class_names : (K,) names stored in the returned Ensemble (default '0'..'K-1').
    Returns the :class:`CrossFitResult` and the fold models as an :class:`Ensemble`.
    Uses all CPU cores (see :func:`_worker_plan`) and restores the thread count and the global
    torch RNG afterwards.
    """
    labels, weights = _check_inputs(images, labels, num_classes, folds=folds, epochs=epochs,
                                    batch_size=batch_size, weights=weights)
    if groups is not None and np.shape(groups) != (len(images),):
        raise ValueError(f"groups must hold one id per image ({len(images)}), got shape {np.shape(groups)}")
    backbone = choose_backbone(len(images), images.shape[1:], backbone)
    dev = resolve_device(device)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), _threads(_main_threads(images)):
        result, ensemble = _compute_cross_fit(images, labels, weights, int(num_classes), folds=int(folds),
                                              epochs=int(epochs), seed=int(seed), backbone=backbone, device=dev,
                                              batch_size=int(batch_size), progress=progress,
                                              backbone_weights=backbone_weights, groups=groups,
                                              first_look=first_look)
    result.seconds = time.perf_counter() - start
    if class_names is not None:
        ensemble.class_names = list(class_names)
    log.info("cross-fit %s: %d images, %d folds, %d epochs, out-of-fold accuracy %.4f, %.0f s", backbone,
             len(images), folds, result.epochs, float((result.pred_probs.argmax(1) == labels).mean()), result.seconds)
    return result, ensemble


def _compute_cross_fit(images, labels, weights, num_classes, *, folds, epochs, seed, backbone, device,
                       batch_size, progress, backbone_weights, groups, first_look) -> tuple[CrossFitResult, Ensemble]:
    """cross_fit on validated inputs."""
    fold_of = stratified_folds(labels, folds, seed, groups)
    n_train = training_size(fold_of)
    if n_train == 0:
        raise ValueError(f"all {len(images)} images fall in one fold: they are exact copies of too few distinct "
                         f"pictures for {folds}-fold training (copies share a fold); add distinct images")
    _warn_small_classes(labels, folds, num_classes)
    epochs = epochs or auto_epochs(backbone, n_train, first_look=first_look)
    if backbone == "small_cnn":
        rows = [np.flatnonzero(fold_of != f) for f in range(folds)]
        models, fold_probs, embeddings = _cross_fit_small_cnn(
            images, labels, weights, num_classes, rows, epochs=epochs, seed=seed, device=device,
            batch_size=batch_size, progress=progress)
    else:
        net = PretrainedFeatures(backbone, side=input_side(images.shape[1:]), weights=backbone_weights).to(device)
        features = _pretrained_features(net, images, device, progress)
        heads, fold_probs = fit_heads(features, labels, weights, num_classes, fold_of, iterations=epochs, seed=seed,
                                      device=str(device), progress=progress)
        embeddings = np.broadcast_to(features, (folds, *features.shape))
        models = [HeadOnFeatures(net, h) for h in heads]
    ensemble = Ensemble(models, backbone=backbone, input_shape=images.shape[1:], num_classes=num_classes,
                        device=device)
    pred_probs = fold_probs[fold_of, np.arange(len(images))]
    return CrossFitResult(pred_probs=pred_probs, fold_probs=fold_probs, fold_of=fold_of, embeddings=embeddings,
                          backbone=backbone, epochs=epochs, seconds=0.0), ensemble


def _cross_fit_small_cnn(images, labels, weights, num_classes, rows, *, epochs, seed, device, batch_size,
                         progress) -> tuple[list[SmallCNN], np.ndarray, np.ndarray]:
    """Train one SmallCNN per fold (rows[f]: its training rows), side by side as _worker_plan says,
    and classify every image with each: models, softmax (F, N, K) and embeddings (F, N, D) float32."""
    folds = len(rows)
    workers, threads = _worker_plan(folds, images, device)
    stop = threading.Event()
    # One stage for training and classifying: side by side, one fold classifies while another
    # still trains, and two stages would flip the job's stage (and lose its ETA) four times a second.
    steps = _Reporter(progress, "train", sum(epochs * math.ceil(len(r) / batch_size) for r in rows)
                      + folds * math.ceil(len(images) / INFERENCE_BATCH["small_cnn"]), stop)
    models = [_new_small_cnn(images[r], num_classes, seed * 1000 + f) for f, r in enumerate(rows)]
    jobs = [partial(_fit_fold, models[f], images, rows[f], labels, weights, threads=threads, steps=steps,
                    epochs=epochs, batch_size=batch_size, seed=seed * 1000 + f, device=device)
            for f in range(folds)]
    log.info("training %d fold models, %d at a time with %d torch thread(s) each", folds, workers, threads)
    outputs = _run_workers(jobs, workers, [steps], stop)
    return models, np.stack([p for p, _ in outputs]), np.stack([e for _, e in outputs])


def _warn_small_classes(labels: np.ndarray, folds: int, num_classes: int) -> None:
    counts = np.bincount(labels, minlength=num_classes)
    small = [int(k) for k in np.flatnonzero((counts > 0) & (counts < folds))]
    if small:
        log.warning("classes %s have fewer images than folds (%d): some fold models never see them, so "
                    "their images get low out-of-fold probability; label more of them", small, folds)


def train_single(images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = 0, seed: int = 0,
                 backbone: str = "auto", device: str = "cpu", batch_size: int = 128,
                 weights: np.ndarray | None = None, progress: Progress | None = None,
                 class_names: list[str] | None = None) -> Ensemble:
    """One model trained on all given images: the paper's procedure (train once, then classify
    everything; scores on the training images are in-sample). Arguments as :func:`cross_fit`;
    returns a one-model :class:`Ensemble`. Uses every core in the caller's thread."""
    labels, weights = _check_inputs(images, labels, num_classes, folds=2, epochs=epochs,
                                    batch_size=batch_size, weights=weights)
    backbone = choose_backbone(len(images), images.shape[1:], backbone)
    dev = resolve_device(device)
    epochs = epochs or auto_epochs(backbone, len(images))
    with torch.random.fork_rng(devices=[]), _threads(_main_threads(images)):
        if backbone == "small_cnn":
            reporter = _Reporter(progress, "train", epochs * math.ceil(len(images) / batch_size))
            model = _train_small_cnn(_new_small_cnn(images, num_classes, seed), images, np.arange(len(images)),
                                     labels, weights, epochs=epochs, batch_size=batch_size, seed=seed, device=dev,
                                     tick=reporter.step)
        else:
            net = PretrainedFeatures(backbone, side=input_side(images.shape[1:])).to(dev)
            features = _pretrained_features(net, images, dev, progress)
            model = HeadOnFeatures(net, _train_head(features, labels, weights, num_classes, iterations=epochs,
                                                    seed=seed, device=dev))
    return Ensemble([model], backbone=backbone, input_shape=images.shape[1:], num_classes=num_classes,
                    device=dev, class_names=class_names)
