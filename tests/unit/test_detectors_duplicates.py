"""Exact and near duplicates are found without comparing all pairs; leakage is marked."""

import numpy as np
from skimage.metrics import structural_similarity

from ml_backend.detectors.duplicates import find_duplicates, similar_images, ssim_pairs


def distinct_images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)


def test_vectorised_ssim_matches_skimage():
    imgs = distinct_images(4)
    noisy = np.clip(imgs[0].astype(int) + 5, 0, 255).astype(np.uint8)
    imgs = np.concatenate([imgs, noisy[None]])
    ours = ssim_pairs(imgs, np.array([0, 1]), np.array([4, 2]))
    ref = [structural_similarity(imgs[0, ..., 0], imgs[4, ..., 0], data_range=255),
           structural_similarity(imgs[1, ..., 0], imgs[2, ..., 0], data_range=255)]
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_exact_and_near_duplicates_found_leakage_marked_and_groups_canonical():
    imgs = distinct_images()
    imgs[10] = imgs[3]  # exact copy
    imgs[20] = np.clip(imgs[5].astype(int) + np.random.default_rng(2).integers(-3, 4, imgs[5].shape), 0, 255)
    hashes = [str(hash(im.tobytes())) for im in imgs]
    emb = imgs.reshape(len(imgs), -1).astype(np.float32)
    splits = np.array(["train"] * 40)
    splits[20] = "val"
    pairs, group = find_duplicates(imgs, hashes, emb, splits, ssim_threshold=0.95, k=3)
    found = {(p["a"], p["b"]): p for p in pairs}
    assert set(found) == {(3, 10), (5, 20)}
    assert found[(3, 10)]["kind"] == "exact" and not found[(3, 10)]["cross_split"]
    assert found[(5, 20)]["kind"] == "near" and found[(5, 20)]["ssim"] >= 0.95 and found[(5, 20)]["cross_split"]
    assert group[3] == group[10] == 3 and group[5] == group[20] == 5
    assert (group >= 0).sum() == 4


def test_similar_images_excludes_self():
    emb = np.array([[0.0], [1.0], [10.0], [11.0]], np.float32)
    sim = similar_images(emb, s=1)
    assert sim[:, 0].tolist() == [1, 0, 3, 2]
