"""Cross-fitting gives honest out-of-sample outputs; the fold models explain themselves."""

import numpy as np
import pytest

from ml_backend.model.fit import Ensemble, auto_epochs, choose_backbone, cross_fit, stratified_folds, train_single


def squares(n_per_class=40, seed=0, side=16):
    """Three classes: a bright 5x5 square top-left, top-right or bottom-centre, plus noise."""
    rng = np.random.default_rng(seed)
    spots = [(2, 2), (2, 9), (9, 5)]
    images, labels = [], []
    for k, (y, x) in enumerate(spots):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (side, side)).astype(np.uint8)
            img[y:y + 5, x:x + 5] = 230
            images.append(img)
            labels.append(k)
    return np.stack(images)[..., None], np.array(labels)


@pytest.fixture(scope="module")
def fitted():
    images, labels = squares(30)
    noisy = labels.copy()
    noisy[0] = 2  # one planted label error
    fit, ensemble = cross_fit(images, noisy, 3, folds=3, epochs=10, seed=0, batch_size=32)
    return images, labels, noisy, fit, ensemble


def test_outputs_are_out_of_fold_and_well_formed(fitted):
    images, labels, noisy, fit, _ = fitted
    n = len(images)
    assert fit.pred_probs.shape == (n, 3) and fit.pred_probs.dtype == np.float32
    assert fit.fold_probs.shape == (3, n, 3) and fit.embeddings.shape[:2] == (3, n)
    np.testing.assert_allclose(fit.pred_probs.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(fit.pred_probs, fit.fold_probs[fit.fold_of, np.arange(n)])
    for k in range(3):  # stratified: every fold holds out a third of each class
        assert np.bincount(fit.fold_of[noisy == k], minlength=3).min() >= 9


def test_model_learns_and_gives_the_planted_error_low_probability(fitted):
    images, labels, noisy, fit, _ = fitted
    assert (fit.pred_probs.argmax(1) == labels).mean() > 0.9
    assert fit.pred_probs[0, noisy[0]] < 0.2


def test_same_seed_same_result_other_seed_differs():
    images, labels = squares(10)
    a, _ = cross_fit(images, labels, 3, folds=2, epochs=2, seed=3, batch_size=16)
    b, _ = cross_fit(images, labels, 3, folds=2, epochs=2, seed=3, batch_size=16)
    c, _ = cross_fit(images, labels, 3, folds=2, epochs=2, seed=4, batch_size=16)
    np.testing.assert_array_equal(a.pred_probs, b.pred_probs)
    assert not np.array_equal(a.pred_probs, c.pred_probs)


def test_saved_ensemble_predicts_the_same(fitted, tmp_path):
    images, _, _, _, ensemble = fitted
    ensemble.class_names = ["tl", "tr", "bc"]
    ensemble.save(tmp_path / "m.pt")
    loaded = Ensemble.load(tmp_path / "m.pt")
    np.testing.assert_allclose(loaded.predict_proba(images[:8]), ensemble.predict_proba(images[:8]), atol=1e-6)
    assert loaded.class_names == ["tl", "tr", "bc"] and loaded.input_shape == (16, 16, 1)


def test_guided_saliency_lights_up_the_discriminative_square(fitted):
    images, labels, _, fit, ensemble = fitted
    rows = np.flatnonzero(labels == 1)[:8]
    sal = ensemble.saliency(images[rows], labels[rows], folds=fit.fold_of[rows])
    assert sal.shape == (8, 16, 16, 1) and sal.min() >= 0
    inside = np.zeros((16, 16), bool)
    inside[2:7, 9:14] = True
    assert sal[:, inside].mean() > 2 * sal[:, ~inside].mean()


def test_backbone_and_epoch_rules():
    assert choose_backbone(1000, (28, 28, 1)) == "small_cnn"
    assert choose_backbone(1000, (160, 120, 3)) == "efficientnet_lite0"
    assert choose_backbone(10, (160, 120, 3), "small_cnn") == "small_cnn"
    assert auto_epochs("small_cnn", 52_500) == 4
    assert auto_epochs("small_cnn", 100) == 30


def test_bad_inputs_get_helpful_messages():
    images, labels = squares(4)
    with pytest.raises(TypeError, match="uint8"):
        cross_fit(images.astype(np.float32), labels, 3)
    with pytest.raises(ValueError, match="labels must lie in"):
        cross_fit(images, labels + 5, 3)
    with pytest.raises(ValueError, match="folds must be between"):
        cross_fit(images, labels, 3, folds=1)


def test_tiny_classes_still_get_folds():
    fold_of = stratified_folds(np.array([0, 0, 0, 0, 1]), 4, seed=0)
    assert sorted(fold_of[:4].tolist()) == [0, 1, 2, 3]


def test_pretrained_backbone_runs_offline_on_photos_and_single_model_trains():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 72, 72, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 6)
    images[labels == 1, :, :, 0] = 255  # red class
    fit, ensemble = cross_fit(images, labels, 2, folds=2, epochs=5, seed=0)
    assert fit.backbone == "efficientnet_lite0" and fit.embeddings.shape == (2, 12, 1280)
    assert ensemble.saliency(images[:2], labels[:2], folds=np.array([0, 1])).shape == (2, 72, 72, 3)
    single = train_single(images, labels, 2, epochs=5, backbone="efficientnet_lite0")
    assert single.folds == 1 and single.predict_proba(images).shape == (12, 2)
