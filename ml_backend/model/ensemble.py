"""The fold models of one cross-fit, kept together to classify, embed and explain images.

Symbols: M images, (H, W, C) their shape, K classes, F fold models, D embedding width.

Saved as one file (``torch.save`` of a dict of state dicts and metadata, loaded with
``weights_only=True``). The EfficientNet-Lite0 backbone is frozen and comes from the
offline weights package (or the user's file), so only its per-fold heads are stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ArtefactError
from .nets import PRETRAINED, FeatureHead, HeadOnFeatures, PretrainedFeatures, SmallCNN
from .saliency import guided_backprop

FORMAT = "deconfusion-ensemble"
FORMAT_VERSION = 2  # 2: pretrained backbones store their name, input side and width
BACKBONES = ("small_cnn", *PRETRAINED)  # plus 'torchvision:<arch>' and 'hub:<repo>:<model>'
INFERENCE_BATCH = {"small_cnn": 1024, "pretrained": 32}  # images per forward pass
SALIENCY_BATCH_BY_KIND = {"small_cnn": 256, "pretrained": 8}  # backward through 224 px is memory-hungry


def is_pretrained(backbone: str) -> bool:
    """Whether ``backbone`` names a frozen pretrained feature extractor (vs the small CNN)."""
    return backbone in PRETRAINED or backbone.startswith(("torchvision:", "hub:"))


def backbone_kind(backbone: str) -> str:
    return "pretrained" if is_pretrained(backbone) else "small_cnn"


# Weight of each view in the combined probabilities and label quality: on CIFAR-10N photos the
# pretrained view alone ranks errors with AP 0.60 and the small CNN 0.43; 2:1 ranked better
# than 1:1 (0.628 vs 0.619, measured offline with self-confidence as the label quality).
VIEW_WEIGHT = {"pretrained": 2.0, "small_cnn": 1.0}


def view_weight(backbone: str) -> float:
    """The weight of a view in the analysis' combined probabilities, and so in /predict's."""
    return VIEW_WEIGHT[backbone_kind(backbone)]


def check_backbone(backbone: str) -> str:
    if not isinstance(backbone, str) or not (backbone == "small_cnn" or is_pretrained(backbone)):
        raise ValueError(f"backbone must be one of {BACKBONES}, 'torchvision:<arch>' or 'hub:<repo>:<model>'; "
                         f"got {backbone!r}")
    return backbone


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu' | 'cuda' | 'cuda:<i>' -> torch.device; ValueError when CUDA is asked for but absent."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'cuda:<index>'), got {str(device)!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but torch sees no CUDA GPU; use device='cpu' "
                         "(DECONFUSION_DEVICE=cpu) or install a CUDA build of torch")
    return dev


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(M, H, W, C) uint8 -> (M, C, H, W) float32 in [0, 1] on ``device``."""
    # Decoded images can be read-only views (np.asarray of a PIL image); torch wants its own.
    array = images if images.flags.writeable else images.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


class Ensemble:
    """The F fold models of a cross-fit, plus what is needed to use them on new images.

    models : F modules mapping (B, C, H, W) in [0, 1] to ``(logits (B, K), embedding (B, D))``;
        for a pretrained backbone they share one frozen :class:`PretrainedFeatures`.
    backbone : 'small_cnn' or a pretrained backbone (:func:`is_pretrained`).
    input_shape : (H, W, C), the shape every image passed in must have.
    class_names : (K,) names, index k is class k (default '0' .. 'K-1').
    """

    def __init__(self, models: Sequence[nn.Module], *, backbone: str, input_shape: tuple[int, int, int],
                 num_classes: int, device: str | torch.device = "cpu",
                 class_names: Sequence[str] | None = None) -> None:
        check_backbone(backbone)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.device = resolve_device(device)
        self.models = [m.to(self.device).eval() for m in models]
        self.backbone = backbone
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]

    @property
    def folds(self) -> int:
        return len(self.models)

    # ----------------------------------------------------------------- inference
    def _check_images(self, images: np.ndarray, caller: str) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise TypeError(f"Ensemble.{caller}: images must be a uint8 numpy array, got "
                            f"{type(images).__name__} {getattr(images, 'dtype', '')}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ValueError(f"Ensemble.{caller}: images must have shape (M, {', '.join(map(str, self.input_shape))}), "
                             f"got {images.shape}; resize with ml_backend.dataset.fit_to_shape(img, ensemble.input_shape)")
        return images

    def _check_fold(self, fold: int) -> int:
        if not 0 <= int(fold) < self.folds:
            raise ValueError(f"fold must be in [0, {self.folds}), got {fold}")
        return int(fold)

    @torch.inference_mode()
    def _outputs(self, images: np.ndarray, folds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Softmax (len(folds), M, K) and embeddings (len(folds), M, D), float32, batch by batch.
        A shared frozen backbone runs once per batch, not once per fold."""
        probs: list[list[np.ndarray]] = [[] for _ in folds]
        embs: list[list[np.ndarray]] = [[] for _ in folds]
        step = INFERENCE_BATCH[backbone_kind(self.backbone)]
        for start in range(0, len(images), step):
            x = to_tensor(images[start:start + step], self.device)
            shared = self.models[0].backbone(x) if is_pretrained(self.backbone) else None
            for j, f in enumerate(folds):
                model = self.models[f]
                logits, emb = (model.head(shared), shared) if shared is not None else model(x)
                probs[j].append(torch.softmax(logits.float(), 1).cpu().numpy())
                embs[j].append(emb.float().cpu().numpy())
        return (np.stack([np.concatenate(p) for p in probs]).astype(np.float32, copy=False),
                np.stack([np.concatenate(e) for e in embs]).astype(np.float32, copy=False))

    def fold_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, H, W, C) uint8 -> softmax (F, M, K) and embeddings (F, M, D) of every fold model, float32."""
        images = self._check_images(images, "fold_outputs")
        return self._outputs(images, range(self.folds))

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(M, H, W, C) uint8 -> (M, K) float32, the mean of the fold models' softmax (rows sum to 1)."""
        images = self._check_images(images, "predict_proba")
        return self._outputs(images, range(self.folds))[0].mean(axis=0).astype(np.float32)

    def embed(self, images: np.ndarray, *, fold: int = 0) -> np.ndarray:
        """(M, H, W, C) uint8 -> (M, D) float32 penultimate features of fold model ``fold``."""
        images = self._check_images(images, "embed")
        return self._outputs(images, [self._check_fold(fold)])[1][0]

    def saliency(self, images: np.ndarray, targets: np.ndarray, *, folds: np.ndarray) -> np.ndarray:
        """Guided-backpropagation saliency.

        images : (M, H, W, C) uint8. targets : (M,) int class to explain per image.
        folds : (M,) int, which fold model explains image m (usually the one that held it out).
        Returns (M, H, W, C) float32 >= 0: |d logit[targets[m]] / d pixel| of model ``folds[m]``.
        """
        images = self._check_images(images, "saliency")
        targets = self._check_index("targets", targets, len(images), self.num_classes)
        folds = self._check_index("folds", folds, len(images), self.folds)
        out = np.zeros(images.shape, dtype=np.float32)
        step = SALIENCY_BATCH_BY_KIND[backbone_kind(self.backbone)]
        for f in np.unique(folds):
            rows = np.flatnonzero(folds == f)
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                grad = guided_backprop(self.models[int(f)], to_tensor(images[chunk], self.device),
                                       torch.from_numpy(targets[chunk]))
                out[chunk] = grad.permute(0, 2, 3, 1).cpu().numpy()
        return out

    @staticmethod
    def _check_index(name: str, values, length: int, bound: int) -> np.ndarray:
        values = np.asarray(values)
        if values.shape != (length,) or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"Ensemble.saliency: {name} must be {length} integers (one per image), "
                             f"got {values.dtype} array of shape {values.shape}")
        if length and (values.min() < 0 or values.max() >= bound):
            raise ValueError(f"Ensemble.saliency: {name} must lie in [0, {bound}), got {values.min()}..{values.max()}")
        return values.astype(np.int64)

    # ----------------------------------------------------------------- storage
    def save(self, path: str | os.PathLike) -> None:
        """Write the ensemble to one file (weights, shapes, class names; no training data)."""
        ModelSet([self]).save(path)

    def _payload(self) -> dict:
        if is_pretrained(self.backbone):
            states = [m.head.state_dict() for m in self.models]
        else:
            states = [m.state_dict() for m in self.models]
        return {"backbone": self.backbone, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "class_names": list(self.class_names), "arch": _arch_of(self.models[0], self.backbone),
                "states": [{k: v.detach().cpu() for k, v in s.items()} for s in states]}

    @classmethod
    def _from_payload(cls, saved: dict, path, device: torch.device, version: int) -> "Ensemble":
        shape, k, arch = tuple(saved["input_shape"]), int(saved["num_classes"]), saved["arch"]
        if is_pretrained(saved["backbone"]):
            if version < 2:  # its features were computed differently: heads do not fit them
                raise ArtefactError(f"{path}: this model file's pretrained heads predate format 2; re-run the analysis")
            shared = PretrainedFeatures(saved["backbone"], side=arch["side"], weights=arch.get("weights", ""))
            if shared.width != arch["width"]:  # this code computes other features than the heads were fit on
                raise ArtefactError(f"{path}: its heads expect {arch['width']} features of {saved['backbone']}, this "
                                    f"version computes {shared.width}; re-run the analysis")
            models = [HeadOnFeatures(shared, _loaded(FeatureHead(arch["width"], k), state, path))
                      for state in saved["states"]]
        else:
            models = [_loaded(SmallCNN(shape[2], k, widths=tuple(arch["widths"]), embedding=arch["embedding"]),
                              state, path) for state in saved["states"]]
        return cls(models, backbone=saved["backbone"], input_shape=shape, num_classes=k, device=device,
                   class_names=saved["class_names"])

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "Ensemble":
        """The first view of a file written by :meth:`save` or :meth:`ModelSet.save`."""
        return ModelSet.load(path, device).views[0]


class ModelSet:
    """The ensembles of every view of one analysis (e.g. the small CNN and a pretrained backbone),
    trained on the same folds. Classifies by the mean of the views' softmax; the first view
    explains (saliency) and embeds.

    views : one or more :class:`Ensemble` of equal input_shape and num_classes.
    """

    def __init__(self, views: Sequence[Ensemble]) -> None:
        if not views or len({(v.input_shape, v.num_classes) for v in views}) != 1:
            raise ValueError("ModelSet needs one or more ensembles of equal input_shape and num_classes")
        self.views = list(views)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.views[0].input_shape

    @property
    def class_names(self) -> list[str]:
        return self.views[0].class_names

    @class_names.setter
    def class_names(self, names: Sequence[str]) -> None:
        for view in self.views:
            view.class_names = list(names)

    @property
    def backbones(self) -> list[str]:
        return [v.backbone for v in self.views]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(M, H, W, C) uint8 -> (M, K) float32, the views' softmax weighted as the analysis weighs
        them (:func:`view_weight`), so a new copy of an analysed image gets its suggestion."""
        return np.average([v.predict_proba(images) for v in self.views], axis=0,
                          weights=[view_weight(v.backbone) for v in self.views]).astype(np.float32)

    def saliency(self, images: np.ndarray, targets: np.ndarray, *, folds: np.ndarray) -> np.ndarray:
        """Guided-backpropagation saliency of the first view (see :meth:`Ensemble.saliency`)."""
        return self.views[0].saliency(images, targets, folds=folds)

    def save(self, path: str | os.PathLike) -> None:
        torch.save({"format": FORMAT, "version": FORMAT_VERSION, "views": [v._payload() for v in self.views]},
                   Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "ModelSet":
        """Read a file written by :meth:`save` (or a format-1 single ensemble); raises ArtefactError
        if it is not one."""
        dev = resolve_device(device)
        try:
            saved = torch.load(Path(path), map_location=dev, weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            raise ArtefactError(f"{path}: cannot read the model file ({exc}); re-run the analysis") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ArtefactError(f"{path}: not a De-Confusion model file")
        version = saved.get("version")
        if version not in (1, FORMAT_VERSION):
            raise ArtefactError(f"{path}: model file version {version} is not supported "
                                f"(this code reads versions 1 and {FORMAT_VERSION}); re-run the analysis")
        payloads = saved["views"] if version >= 2 else [saved]
        return cls([Ensemble._from_payload(p, path, dev, version) for p in payloads])


def _arch_of(model: nn.Module, backbone: str) -> dict:
    if is_pretrained(backbone):
        return {"width": model.backbone.width, "side": model.backbone.side, "weights": model.backbone.weights}
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    return {"widths": [c.out_channels for c in convs], "embedding": model.embed[0].out_features}


def _loaded(module: nn.Module, state: dict, path) -> nn.Module:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtefactError(f"{path}: weights do not fit the network ({exc}); re-run the analysis") from None
    return module.eval()
