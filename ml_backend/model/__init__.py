"""The model stage: out-of-sample probabilities, embeddings and saliency (torch lives here only).

Public API: :func:`choose_views`, then per view :func:`cross_fit` -> (:class:`CrossFitResult`,
:class:`Ensemble`), the views' ensembles together as a :class:`ModelSet`; :func:`train_single` for the paper's one model.
See :mod:`ml_backend.model.fit`.
"""

from .ensemble import Ensemble, ModelSet
from .fit import CrossFitResult, auto_epochs, choose_backbone, choose_views, cross_fit, train_single

__all__ = ["CrossFitResult", "Ensemble", "ModelSet", "auto_epochs", "choose_backbone", "choose_views", "cross_fit",
           "train_single"]
