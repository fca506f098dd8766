"""The model stage: out-of-sample probabilities, embeddings and saliency (torch lives here only).

Public API: :func:`cross_fit` -> (:class:`CrossFitResult`, :class:`Ensemble`),
:func:`choose_backbone`, :func:`train_single`. See :mod:`ml_backend.model.fit`.
"""

from .ensemble import Ensemble
from .fit import CrossFitResult, auto_epochs, choose_backbone, cross_fit, train_single

__all__ = ["CrossFitResult", "Ensemble", "auto_epochs", "choose_backbone", "cross_fit", "train_single"]
