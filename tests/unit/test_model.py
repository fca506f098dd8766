"""Cross-fitting, the fold ensemble and guided-backprop saliency on planted synthetic images.

The images: 16x16 grey noise with one bright 4x4 square whose position is the class, so
the truth (and the discriminative pixels) are known.
"""

import logging
import math

import numpy as np
import pytest
import torch

from ml_backend.errors import ArtefactError
from ml_backend.model import CrossFitResult, Ensemble, auto_epochs, choose_backbone, cross_fit, train_single
from ml_backend.model.ensemble import INFERENCE_BATCH, ModelSet
from ml_backend.model.fit import choose_views, fit_heads, stratified_folds

SIDE = 16
CORNERS = [(2, 2), (2, 10), (10, 6)]  # top-left of each class's square
PER_CLASS = 40
FOLDS = 4
EPOCHS = 20
FLIPPED = 5  # index of an image of class 0 whose label is planted as class 1


def make_squares(per_class=PER_CLASS, seed=0):
    """(N, 16, 16, 1) uint8 images, (N,) true labels and (N, 16, 16) bool masks of the squares."""
    rng = np.random.default_rng(seed)
    images, labels, masks = [], [], []
    for k, (r, c) in enumerate(CORNERS):
        for _ in range(per_class):
            img = rng.normal(40, 15, (SIDE, SIDE)).clip(0, 255)
            dr, dc = rng.integers(-1, 2, 2)
            mask = np.zeros((SIDE, SIDE), bool)
            mask[r + dr:r + dr + 4, c + dc:c + dc + 4] = True
            img[mask] = rng.normal(220, 15, mask.sum()).clip(0, 255)
            images.append(img.astype(np.uint8)[:, :, None])
            labels.append(k)
            masks.append(mask)
    return np.stack(images), np.array(labels, np.int64), np.stack(masks)


@pytest.fixture(scope="module")
def data():
    images, truth, masks = make_squares()
    noisy = truth.copy()
    noisy[FLIPPED] = 1
    return images, truth, noisy, masks


@pytest.fixture(scope="module")
def fitted(data):
    images, _, noisy, _ = data
    calls = []
    result, ensemble = cross_fit(images, noisy, 3, folds=FOLDS, epochs=EPOCHS, seed=0, backbone="small_cnn",
                                 progress=lambda *a: calls.append(a))
    return result, ensemble, calls


def test_result_fields_have_documented_shapes_and_dtypes(data, fitted):
    images = data[0]
    result, ensemble, _ = fitted
    n, k = len(images), 3
    assert isinstance(result, CrossFitResult)
    assert result.pred_probs.shape == (n, k) and result.pred_probs.dtype == np.float32
    assert result.fold_probs.shape == (FOLDS, n, k) and result.fold_probs.dtype == np.float32
    assert result.fold_of.shape == (n,) and result.fold_of.dtype == np.int64
    assert result.embeddings.ndim == 3 and result.embeddings.shape[:2] == (FOLDS, n)
    assert 64 <= result.embeddings.shape[2] <= 128 and result.embeddings.dtype == np.float32
    assert result.backbone == "small_cnn" and result.epochs == EPOCHS and result.seconds > 0
    assert np.allclose(result.pred_probs.sum(1), 1, atol=1e-5)
    assert ensemble.folds == FOLDS and ensemble.num_classes == k and ensemble.input_shape == images.shape[1:]


def test_pred_probs_are_out_of_fold(data, fitted):
    result = fitted[0]
    n = len(data[0])
    assert np.array_equal(result.pred_probs, result.fold_probs[result.fold_of, np.arange(n)])


def test_every_image_held_out_exactly_once_and_folds_are_stratified(data, fitted):
    labels = data[2]
    fold_of = fitted[0].fold_of
    assert set(np.unique(fold_of)) == set(range(FOLDS))
    sizes = np.bincount(fold_of, minlength=FOLDS)
    assert sizes.sum() == len(labels) and sizes.max() - sizes.min() <= 1
    for k in np.unique(labels):
        per_fold = np.bincount(fold_of[labels == k], minlength=FOLDS)
        assert per_fold.max() - per_fold.min() <= 1


def test_model_learns_and_does_not_vouch_for_a_flipped_label(data, fitted):
    _, truth, noisy, _ = data
    probs = fitted[0].pred_probs
    assert (probs.argmax(1) == truth).mean() > 0.9  # chance is 1/3
    assert probs[FLIPPED, noisy[FLIPPED]] < 0.2
    assert probs[FLIPPED, truth[FLIPPED]] > 0.6


def test_same_seed_same_result_other_seed_differs(data, fitted):
    images, _, noisy, _ = data
    again, _ = cross_fit(images, noisy, 3, folds=FOLDS, epochs=EPOCHS, seed=0, backbone="small_cnn")
    assert np.array_equal(again.pred_probs, fitted[0].pred_probs)
    assert np.array_equal(again.fold_of, fitted[0].fold_of)
    other, _ = cross_fit(images, noisy, 3, folds=FOLDS, epochs=EPOCHS, seed=1, backbone="small_cnn")
    assert not np.array_equal(other.fold_of, fitted[0].fold_of)
    assert not np.allclose(other.pred_probs, fitted[0].pred_probs)


def test_cross_fit_leaves_the_global_torch_rng_alone(data):
    images, _, noisy, _ = data
    state = torch.get_rng_state()
    cross_fit(images[::4], noisy[::4], 3, folds=2, epochs=1, backbone="small_cnn")
    assert torch.equal(state, torch.get_rng_state())


def test_progress_is_reported_per_step_up_to_the_total(fitted, data):
    # The fold models train side by side and classify every image when done: one stage, counted
    # in training batches plus classification batches, so the job's stage never flips back.
    calls = fitted[2]
    assert {c[0] for c in calls} == {"train"}
    assert all(0 < done <= total for _, done, total in calls)
    assert [done for _, done, _ in calls] == sorted({done for _, done, _ in calls})  # rising, no repeats
    assert calls[-1][1] == calls[-1][2] == FOLDS * EPOCHS + FOLDS * math.ceil(len(data[0]) / INFERENCE_BATCH["small_cnn"])


def test_an_error_in_the_progress_callback_stops_the_fold_workers_and_is_raised(data):
    images, _, noisy, _ = data

    def cancel(stage, done, total):
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt, match="cancelled"):
        cross_fit(images, noisy, 3, folds=FOLDS, epochs=EPOCHS, backbone="small_cnn", progress=cancel)


def test_ensemble_predicts_embeds_and_round_trips(tmp_path, data, fitted):
    images = data[0][:10]
    ensemble = fitted[1]
    probs = ensemble.predict_proba(images)
    assert probs.shape == (10, 3) and probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(probs, fitted[0].fold_probs[:, :10].mean(0), atol=1e-5)
    assert np.allclose(ensemble.embed(images, fold=2), fitted[0].embeddings[2, :10], atol=1e-5)
    ensemble.class_names = ["left", "right", "bottom"]
    ensemble.save(tmp_path / "model.pt")
    loaded = Ensemble.load(tmp_path / "model.pt")
    assert loaded.class_names == ["left", "right", "bottom"] and loaded.folds == FOLDS
    assert loaded.input_shape == ensemble.input_shape and loaded.backbone == "small_cnn"
    assert np.array_equal(loaded.predict_proba(images), probs)
    assert np.allclose(loaded.predict_proba(images[0]), probs[:1])  # one (H, W, C) image is fine too


def test_loading_something_else_raises_artefact_error(tmp_path):
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ArtefactError, match="not a De-Confusion model"):
        Ensemble.load(tmp_path / "other.pt")


def test_ensemble_rejects_images_of_another_shape(fitted):
    with pytest.raises(ValueError, match="fit_to_shape"):
        fitted[1].predict_proba(np.zeros((2, 20, 20, 1), np.uint8))


def test_saliency_is_nonnegative_and_highlights_the_square(data, fitted):
    images, truth, _, masks = data
    result, ensemble, _ = fitted
    rows = np.arange(0, len(images), 3)
    sal = ensemble.saliency(images[rows], truth[rows], folds=result.fold_of[rows])
    assert sal.shape == images[rows].shape and sal.dtype == np.float32 and sal.min() >= 0
    inside = np.mean([s[m].mean() for s, m in zip(sal[..., 0], masks[rows])])
    outside = np.mean([s[~m].mean() for s, m in zip(sal[..., 0], masks[rows])])
    assert inside > 2 * outside


def test_saliency_checks_targets_and_folds(data, fitted):
    images = data[0][:2]
    with pytest.raises(ValueError, match="targets"):
        fitted[1].saliency(images, np.array([0, 3]), folds=np.array([0, 0]))
    with pytest.raises(ValueError, match="folds"):
        fitted[1].saliency(images, np.array([0, 1]), folds=np.array([0, FOLDS]))


def test_class_smaller_than_folds_still_works(caplog):
    images, labels, _ = make_squares(per_class=8, seed=3)
    keep = np.r_[np.flatnonzero(labels != 2), np.flatnonzero(labels == 2)[:2]]  # class 2: two images
    with caplog.at_level(logging.WARNING, logger="ml_backend.model"):
        result, _ = cross_fit(images[keep], labels[keep], 3, folds=4, epochs=2, backbone="small_cnn")
    assert result.pred_probs.shape == (len(keep), 3)
    assert "fewer images than folds" in caplog.text


def test_a_project_of_copies_of_one_picture_is_refused_naming_the_reason():
    blank_scans = np.zeros((12, 8, 8, 1), np.uint8)
    labels = np.array([0, 1] * 6)
    with pytest.raises(ValueError, match="copies of too few distinct pictures"):
        cross_fit(blank_scans, labels, 2, folds=4, epochs=1, backbone="small_cnn", groups=np.array(["h"] * 12))


def test_stratified_folds_with_tiny_classes_stay_balanced():
    labels = np.array([0] * 7 + [1] * 1 + [2] * 2)
    fold_of = stratified_folds(labels, 4, seed=0)
    assert np.bincount(fold_of, minlength=4).tolist() in ([3, 3, 2, 2], [3, 2, 3, 2], [2, 3, 3, 2])
    assert np.bincount(fold_of[labels == 0], minlength=4).max() == 2


def test_exact_copies_share_a_fold_and_distinct_images_keep_their_folds():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 200)
    hashes = np.array([f"h{i}" for i in range(200)])
    assert np.array_equal(stratified_folds(labels, 4, 0, hashes), stratified_folds(labels, 4, 0))
    hashes[[10, 50, 150]] = "same picture"  # three copies, labeled differently maybe
    fold_of, before = stratified_folds(labels, 4, 0, hashes), stratified_folds(labels, 4, 0)
    assert set(fold_of[[10, 50, 150]]) == {before[10]}  # no held-out model trained on a copy
    others = np.ones(200, bool)
    others[[50, 150]] = False
    assert np.array_equal(fold_of[others], before[others])  # every other image keeps its fold


@pytest.mark.parametrize("shape, expected", [
    ((28, 28, 1), "small_cnn"), ((32, 32, 3), "small_cnn"), ((64, 48, 3), "small_cnn"),
    ((65, 64, 3), "efficientnet_lite0"), ((160, 120, 3), "efficientnet_lite0")])
def test_choose_backbone_auto_rule(shape, expected):
    assert choose_backbone(1000, shape) == expected


@pytest.mark.parametrize("shape, expected", [
    ((28, 28, 1), ["small_cnn"]), ((32, 32, 3), ["small_cnn", "efficientnet_lite0", "efficientnet_lite2"]),
    ((160, 120, 1), ["efficientnet_lite0", "efficientnet_lite2"]),
    ((160, 120, 3), ["efficientnet_lite0", "efficientnet_lite2"])])
def test_auto_views_add_pretrained_features_to_colour_photos_of_any_size(shape, expected):
    assert choose_views(shape) == expected
    assert choose_views(shape, "small_cnn+efficientnet_lite2") == ["small_cnn", "efficientnet_lite2"]


def test_choose_backbone_override_and_unknown():
    assert choose_backbone(10, (224, 224, 3), "small_cnn") == "small_cnn"
    assert choose_backbone(10, (28, 28, 1), "efficientnet_lite0") == "efficientnet_lite0"
    with pytest.raises(ValueError, match="resnet"):
        choose_backbone(10, (28, 28, 1), "resnet")


def test_auto_epochs_fewer_for_more_images():
    assert auto_epochs("small_cnn", 52_500) == 3  # MNIST, 4 folds
    assert auto_epochs("small_cnn", 100) == 40
    assert auto_epochs("small_cnn", 10_000) == 15
    assert auto_epochs("small_cnn", 10_000) > auto_epochs("small_cnn", 40_000)
    # a first look sees a third as many images: MNIST one epoch; sets at the most epochs train them at once
    assert [auto_epochs("small_cnn", n, first_look=True) for n in (52_500, 10_000, 3_000, 1_000)] == [1, 5, 40, 40]


GOOD = dict(images=np.zeros((6, 8, 8, 1), np.uint8), labels=np.array([0, 1] * 3), num_classes=2)


@pytest.mark.parametrize("change, error, match", [
    (dict(images=np.zeros((6, 8, 8, 1), np.float32)), TypeError, "uint8"),
    (dict(images=np.zeros((6, 8, 8), np.uint8)), ValueError, r"images\[\.\.\., None\]"),
    (dict(images=np.zeros((6, 8, 8, 4), np.uint8)), ValueError, "C in"),
    (dict(labels=np.array([0, 1, 0])), ValueError, "6 integers"),
    (dict(labels=np.array([0, 1, 2, 0, 1, 0])), ValueError, r"\[0, 2\).*0\.\.2"),
    (dict(labels=np.array([0.0, 1, 0, 1, 0, 1])), ValueError, "integers"),
    (dict(num_classes=1), ValueError, "num_classes"),
    (dict(folds=1), ValueError, "folds"),
    (dict(folds=7), ValueError, "folds"),
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(weights=np.ones(5)), ValueError, "weights"),
    (dict(weights=np.array([1, 1, 1, 1, 1, -1.0])), ValueError, "weights"),
    (dict(backbone="vgg"), ValueError, "vgg"),
    (dict(device="tpu"), ValueError, "device"),
])
def test_bad_input_is_refused_with_the_value_and_a_fix(change, error, match):
    args = {**GOOD, **change}
    with pytest.raises(error, match=match):
        cross_fit(args.pop("images"), args.pop("labels"), args.pop("num_classes"), **args)


def test_train_single_is_one_model_on_all_images(data):
    images, truth, _, _ = data
    calls = []
    ensemble = train_single(images, truth, 3, epochs=10, seed=0, backbone="small_cnn",
                            progress=lambda *a: calls.append(a))
    assert isinstance(ensemble, Ensemble) and ensemble.folds == 1 and ensemble.backbone == "small_cnn"
    assert ensemble.class_names == ["0", "1", "2"]
    probs = ensemble.predict_proba(images)
    assert probs.shape == (len(images), 3) and probs.dtype == np.float32
    assert (probs.argmax(1) == truth).mean() > 0.9  # in-sample, as in the paper's procedure
    assert calls and calls[-1][0] == "train" and calls[-1][1] == calls[-1][2]
    again = train_single(images, truth, 3, epochs=10, seed=0, backbone="small_cnn")
    assert np.array_equal(again.predict_proba(images), probs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_cuda_without_gpu_is_a_clear_error(data):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        cross_fit(data[0][:8], data[2][:8], 3, folds=2, device="cuda")


def test_efficientnet_lite0_path_on_tiny_colour_set(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 80, (12, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 6)
    images[labels == 1, 8:24, 8:24, 0] = 230  # class 1: a red square
    result, ensemble = cross_fit(images, labels, 2, folds=2, epochs=1, backbone="efficientnet_lite0")
    assert result.backbone == "efficientnet_lite0"
    assert result.pred_probs.shape == (12, 2) and result.fold_probs.shape == (2, 12, 2)
    # pooled head feature map (1280) + pooled outputs of the last three stages (112 + 192 + 320)
    assert result.embeddings.shape == (2, 12, 1904) and result.embeddings.dtype == np.float32
    assert np.array_equal(result.pred_probs, result.fold_probs[result.fold_of, np.arange(12)])
    sal = ensemble.saliency(images[:2], np.array([0, 1]), folds=result.fold_of[:2])
    assert sal.shape == (2, 32, 32, 3) and sal.min() >= 0 and sal.max() > 0
    ensemble.save(tmp_path / "model.pt")
    loaded = Ensemble.load(tmp_path / "model.pt")
    assert np.allclose(loaded.predict_proba(images[:4]), ensemble.predict_proba(images[:4]), atol=1e-5)
    assert np.allclose(ensemble.predict_proba(images), result.fold_probs.mean(0), atol=1e-4)


def tiny_colour_set():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 80, (12, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 6)
    images[labels == 1, 8:24, 8:24, 0] = 230  # class 1: a red square
    return images, labels


def test_a_torchvision_backbone_loads_from_a_weights_file(tmp_path):
    """What a user with a GPU box or a torch cache plugs in: torchvision:<arch> + a state-dict file."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    images, labels = tiny_colour_set()
    result, ensemble = cross_fit(images, labels, 2, folds=2, backbone="torchvision:resnet18",
                                 backbone_weights=str(tmp_path / "resnet18.pth"))
    assert result.embeddings.shape == (2, 12, 512)  # resnet18's pooled features: the input of its fc
    ensemble.save(tmp_path / "model.pt")
    again = ModelSet.load(tmp_path / "model.pt")
    assert again.backbones == ["torchvision:resnet18"]
    assert np.allclose(again.predict_proba(images[:3]), ensemble.predict_proba(images[:3]), atol=1e-5)
    with pytest.raises(ValueError, match="cannot load weights"):
        cross_fit(images, labels, 2, folds=2, backbone="torchvision:resnet34",
                  backbone_weights=str(tmp_path / "resnet18.pth"))
    with pytest.raises(ValueError, match="no model"):
        cross_fit(images, labels, 2, folds=2, backbone="torchvision:resnet9000")


def test_model_set_weighs_views_round_trips_and_reads_format_1(tmp_path, data):
    images, labels = tiny_colour_set()
    cnn = cross_fit(images, labels, 2, folds=2, epochs=1, backbone="small_cnn")[1]
    lite = cross_fit(images, labels, 2, folds=2, backbone="efficientnet_lite0")[1]
    both = ModelSet([cnn, lite])
    both.class_names = ["plain", "red"]
    expected = (cnn.predict_proba(images) + 2 * lite.predict_proba(images)) / 3  # as the analysis weighs them
    assert np.allclose(both.predict_proba(images), expected, atol=1e-6)
    both.save(tmp_path / "model.pt")
    again = ModelSet.load(tmp_path / "model.pt")
    assert again.backbones == ["small_cnn", "efficientnet_lite0"] and again.class_names == ["plain", "red"]
    assert np.allclose(again.predict_proba(images), expected, atol=1e-5)
    # A version-1 file (one small-CNN ensemble, written before views) still loads.
    payload = cnn._payload()
    torch.save({"format": "deconfusion-ensemble", "version": 1, **payload}, tmp_path / "v1.pt")
    assert np.allclose(ModelSet.load(tmp_path / "v1.pt").predict_proba(images), cnn.predict_proba(images), atol=1e-6)
    torch.save({"format": "deconfusion-ensemble", "version": 1, **lite._payload()}, tmp_path / "v1-lite.pt")
    with pytest.raises(ArtefactError, match="re-run the analysis"):
        ModelSet.load(tmp_path / "v1-lite.pt")
    # Heads fitted on features this code no longer computes (another width) are refused clearly.
    views = [cnn._payload(), {**lite._payload(), "arch": {**lite._payload()["arch"], "width": 1392}}]
    torch.save({"format": "deconfusion-ensemble", "version": 2, "views": views}, tmp_path / "old-width.pt")
    with pytest.raises(ArtefactError, match="expect 1392 features"):
        ModelSet.load(tmp_path / "old-width.pt")


def test_heads_trained_without_pruned_images_never_see_their_labels():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64)
    fold_of = stratified_folds(labels, 2, seed=0)
    wrong = np.flatnonzero(labels == 0)[:30]
    noisy = labels.copy()
    noisy[wrong] = 1
    weights = np.ones(200, np.float32)
    _, with_errors = fit_heads(features, noisy, weights, 2, fold_of)
    weights[wrong] = 0.0
    _, pruned = fit_heads(features, noisy, weights, 2, fold_of)
    # Without the wrong labels pulling it, each held-out head is surer they are wrong.
    held_out = fold_of[wrong], wrong
    assert (pruned[held_out][:, 1] < with_errors[held_out][:, 1]).mean() > 0.8
