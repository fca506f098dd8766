import numpy as np

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
