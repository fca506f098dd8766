"""The in-detail map: hue features of saliency maps, t-SNE for 6+ images, a row below that."""

import colorsys

import numpy as np
import pytest

from ml_backend.detectors.maps import cell_map, saliency_features


def test_tsne_map_is_deterministic_in_unit_square_and_separates_groups():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(0, 0.1, (15, 20)), rng.normal(5, 0.1, (15, 20))]).astype(np.float32)
    xy = cell_map(feats, seed=1)
    assert xy.shape == (30, 2) and xy.min() >= 0 and xy.max() <= 1
    np.testing.assert_array_equal(xy, cell_map(feats, seed=1))
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(30) * 9
    nearest = dist.argmin(axis=1)
    assert ((nearest < 15) == (np.arange(30) < 15)).all()  # each image's neighbour on the map is from its group


def test_fewer_than_six_images_sit_side_by_side():
    xy = cell_map(np.zeros((3, 4), np.float32))
    np.testing.assert_allclose(xy, [[1 / 6, 0.5], [0.5, 0.5], [5 / 6, 0.5]])


def test_colour_saliency_keeps_hue_only():
    red = np.zeros((2, 8, 8, 3), np.float32)
    red[..., 0] = 1.0
    dim_red = red * 0.2  # same hue, other brightness
    f = saliency_features(np.concatenate([red, dim_red]))
    np.testing.assert_allclose(f[0], f[2])
    grey = saliency_features(np.ones((1, 64, 64, 1), np.float32))
    assert grey.shape == (1, 32 * 32)


def hue_map(hue, side=4):
    """(side, side, 3) fully saturated colour of the given HSV hue."""
    return np.tile(np.array(colorsys.hsv_to_rgb(hue, 1.0, 1.0), np.float32), (side, side, 1))


def test_hue_is_circular_and_ignores_brightness():
    f = saliency_features(np.stack([hue_map(0.99), hue_map(0.01), hue_map(0.5), 0.3 * hue_map(0.5)]))
    assert f.shape == (4, 2 * 4 * 4) and f.dtype == np.float32
    assert np.linalg.norm(f[0] - f[1]) < 0.2 * np.linalg.norm(f[0] - f[2])  # 0.99 and 0.01 are neighbours
    np.testing.assert_allclose(f[2], f[3], atol=1e-6)


def test_pixels_without_hue_and_empty_maps_give_zero_features():
    grey = np.full((1, 4, 4, 3), 0.7, np.float32)
    empty = np.zeros((1, 4, 4, 3), np.float32)
    assert not saliency_features(np.concatenate([grey, empty])).any()
    assert not saliency_features(np.zeros((1, 4, 4, 1), np.float32)).any()


def test_grey_maps_keep_their_normalised_magnitude_downsampled_to_32():
    sal = np.zeros((1, 96, 64, 1), np.float32)
    sal[0, :48] = 4.0  # top half bright
    f = saliency_features(sal).reshape(32, 32)
    np.testing.assert_allclose(f[:16], 1.0)
    np.testing.assert_allclose(f[16:], 0.0)


def test_six_images_are_embedded_five_sit_in_a_row():
    rng = np.random.default_rng(2)
    xy = cell_map(rng.normal(size=(6, 10)).astype(np.float32))
    assert xy.shape == (6, 2) and xy.dtype == np.float32 and xy.min() >= 0 and xy.max() <= 1
    assert not np.allclose(xy[:, 1], 0.5)  # t-SNE, not the row layout
    row = cell_map(rng.normal(size=(5, 10)).astype(np.float32))
    np.testing.assert_allclose(row, [[0.1, 0.5], [0.3, 0.5], [0.5, 0.5], [0.7, 0.5], [0.9, 0.5]])


def test_identical_features_go_on_a_grid_instead_of_failing():
    xy = cell_map(np.ones((9, 4), np.float32))
    assert np.isfinite(xy).all() and len({tuple(p) for p in xy.tolist()}) == 9
    assert xy.min() >= 0 and xy.max() <= 1


def test_map_inputs_are_checked():
    with pytest.raises(ValueError, match="saliency.*>= 0"):
        saliency_features(-np.ones((1, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="saliency.*C = 1"):
        saliency_features(np.ones((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="features.*finite"):
        cell_map(np.full((7, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="features.*2-D"):
        cell_map(np.ones(7, np.float32))
