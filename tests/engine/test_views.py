"""Which views an analysis trains is decided by the data: a lone small CNN on grey images gets
a pretrained view when it confuses classes beyond the label noise."""

import io

import numpy as np
import pytest
from PIL import Image

from ml_backend import pipeline
from ml_backend.model import fit
from ml_backend.config import Settings
from ml_backend.dataset import Record, build_dataset
from tests.unit.test_model import make_squares


def grey_squares():
    images, labels, _ = make_squares(per_class=20)
    records = []
    for n, (img, label) in enumerate(zip(images, labels)):
        buffer = io.BytesIO()
        Image.fromarray(img[:, :, 0]).save(buffer, format="PNG")
        records.append(Record(item=f"{n}.png", source=buffer.getvalue(), label=f"corner{label}"))
    return build_dataset(records)


@pytest.mark.parametrize("threshold, views", [(1.0, "small_cnn"),
                                              (-1.0, "small_cnn+efficientnet_lite0+efficientnet_lite2")])
def test_the_pretrained_views_join_when_the_cnn_confuses_beyond_the_noise(monkeypatch, threshold, views):
    monkeypatch.setattr(pipeline, "CONFUSION_FOR_PRETRAINED", threshold)
    analysis, models = pipeline.run_analysis(grey_squares(), Settings(folds=2, epochs=2))
    assert analysis.params["backbone_used"] == views
    assert analysis.pred_probs.shape == (60, 3) and np.isfinite(analysis.error_score).all()
    assert sorted(analysis.evidence) == sorted(f"doubt_{v}" for v in views.split("+"))


def test_an_explicit_backbone_is_never_extended(monkeypatch):
    monkeypatch.setattr(pipeline, "CONFUSION_FOR_PRETRAINED", -1.0)
    analysis, _ = pipeline.run_analysis(grey_squares(), Settings(folds=2, epochs=2, backbone="small_cnn"))
    assert analysis.params["backbone_used"] == "small_cnn"


@pytest.mark.parametrize("threshold, used", [(1.0, [10]), (-1.0, [30, 50, 50])])
def test_a_cnn_that_tells_the_classes_apart_after_a_first_look_is_not_trained_further(monkeypatch, threshold, used):
    # 30 training images per fold, a budget of 900: automatic epochs 30; a first look at 300 images
    # 10 epochs. A CNN that still confuses the classes trains all 30 beside the pretrained views
    # (50 L-BFGS iterations)
    monkeypatch.setattr(fit, "SMALL_CNN_SAMPLES", 900)
    monkeypatch.setattr(fit, "FIRST_LOOK_SAMPLES", 300)
    monkeypatch.setattr(pipeline, "CONFUSION_FOR_PRETRAINED", threshold)
    analysis, models = pipeline.run_analysis(grey_squares(), Settings(folds=2))
    assert analysis.params["epochs_used"] == used
    assert len(models.views) == len(used)


def test_a_small_set_trains_its_full_epochs_at_the_first_look(monkeypatch):
    trained = []
    def counted(*args, **kwargs):
        trained.append(kwargs["backbone"])
        return fit.cross_fit(*args, **kwargs)

    monkeypatch.setattr(pipeline, "cross_fit", counted)
    monkeypatch.setattr(pipeline, "CONFUSION_FOR_PRETRAINED", -1.0)
    analysis, _ = pipeline.run_analysis(grey_squares(), Settings(folds=2))
    assert analysis.params["epochs_used"] == [40, 50, 50]
    assert trained == ["small_cnn", "efficientnet_lite0", "efficientnet_lite2"]  # the CNN trained once
