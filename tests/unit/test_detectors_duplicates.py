"""Exact and near duplicates are found without comparing all pairs; leakage is marked."""

import numpy as np
import pytest
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


def test_vectorised_ssim_matches_skimage_on_colour_and_tiny_images():
    rng = np.random.default_rng(3)
    for shape, win in (((32, 32, 3), 7), ((5, 6, 3), 5)):
        imgs = rng.integers(0, 256, (3, *shape), dtype=np.uint8)
        imgs[1] = np.clip(imgs[0].astype(int) + rng.integers(-6, 7, shape), 0, 255)
        ours = ssim_pairs(imgs, np.array([0, 0]), np.array([1, 2]))
        ref = [structural_similarity(imgs[0], imgs[j], data_range=255, channel_axis=-1, win_size=win) for j in (1, 2)]
        np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_copies_of_one_image_pair_with_the_first_and_form_one_group():
    imgs = distinct_images(12)
    imgs[4] = imgs[7] = imgs[9] = imgs[2]
    hashes = [im.tobytes().hex() for im in imgs]
    pairs, group = find_duplicates(imgs, hashes, imgs.reshape(12, -1).astype(np.float32), ["train"] * 12, k=4)
    assert [(p["a"], p["b"], p["kind"]) for p in pairs] == [(2, 4, "exact"), (2, 7, "exact"), (2, 9, "exact")]
    assert all(p["ssim"] == 1.0 for p in pairs)
    assert group.tolist() == [-1, -1, 2, -1, 2, -1, -1, 2, -1, 2, -1, -1]


def test_a_chain_of_near_pairs_is_one_group_named_by_its_lowest_member():
    imgs = distinct_images(20, seed=4)
    rng = np.random.default_rng(5)
    for src, dst in ((6, 11), (11, 17)):  # 6 ~ 11 ~ 17
        imgs[dst] = np.clip(imgs[src].astype(int) + rng.integers(-2, 3, imgs[src].shape), 0, 255)
    hashes = [im.tobytes().hex() for im in imgs]
    splits = ["val" if i == 17 else "train" for i in range(20)]
    pairs, group = find_duplicates(imgs, hashes, imgs.reshape(20, -1).astype(np.float32), splits, k=3)
    near = {(p["a"], p["b"]): p for p in pairs}
    assert {(6, 11), (11, 17)} <= set(near) and all(p["kind"] == "near" for p in pairs)
    assert near[(11, 17)]["cross_split"] and not near[(6, 11)]["cross_split"]
    assert group[6] == group[11] == group[17] == 6 and (group >= 0).sum() == 3


def test_a_different_image_next_in_embedding_space_is_not_a_duplicate():
    imgs = distinct_images(6, seed=6)
    emb = np.zeros((6, 2), np.float32)
    emb[:, 0] = [0, 0.01, 5, 10, 15, 20]  # images 0 and 1 are neighbours but look nothing alike
    pairs, group = find_duplicates(imgs, [str(i) for i in range(6)], emb, ["train"] * 6, k=1)
    assert pairs == [] and (group == -1).all()


def test_duplicate_inputs_are_checked_with_helpful_messages():
    imgs = distinct_images(3)
    emb = np.zeros((3, 2), np.float32)
    with pytest.raises(TypeError, match="images.*uint8"):
        find_duplicates(imgs.astype(np.float32), ["a", "b", "c"], emb, ["train"] * 3)
    with pytest.raises(ValueError, match="images.*channel axis"):
        find_duplicates(imgs[..., 0], ["a", "b", "c"], emb, ["train"] * 3)
    with pytest.raises(ValueError, match="splits.*'train', 'val'.*test"):
        find_duplicates(imgs, ["a", "b", "c"], emb, ["train", "test", "val"])
    with pytest.raises(ValueError, match="embeddings.*\\(3, D\\)"):
        find_duplicates(imgs, ["a", "b", "c"], emb[:2], ["train"] * 3)
    with pytest.raises(ValueError, match="pixel_hashes.*length 3"):
        find_duplicates(imgs, ["a", "b"], emb, ["train"] * 3)
    with pytest.raises(ValueError, match="ssim_threshold"):
        find_duplicates(imgs, ["a", "b", "c"], emb, ["train"] * 3, ssim_threshold=1.5)


def test_similar_images_pad_with_minus_one_and_skip_self_among_equal_embeddings():
    emb = np.zeros((3, 4), np.float32)  # all tie at distance 0
    sim = similar_images(emb, s=4)
    assert sim.shape == (3, 4) and sim.dtype == np.int64
    for i, row in enumerate(sim):
        assert sorted(row[:2].tolist()) == sorted({0, 1, 2} - {i}) and row[2:].tolist() == [-1, -1]
    assert similar_images(emb, s=0).shape == (3, 0)


def smooth_images(n=30, side=28, seed=0):
    """Distinct pictures with flat regions and edges (digit-like): a few random bright rectangles."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, side, side, 1), np.uint8)
    for img in imgs:
        for _ in range(3):
            y, x = rng.integers(0, side - 8, 2)
            h, w = rng.integers(4, 12, 2)
            img[y:y + h, x:x + w] = rng.integers(120, 256)
    return imgs


def test_copies_resaved_with_noise_or_shifted_are_near_duplicates_distinct_images_are_not():
    from PIL import Image

    imgs = smooth_images()
    rng = np.random.default_rng(1)
    noisy = np.clip(imgs[2].astype(float) + rng.normal(0, 3, imgs[2].shape), 0, 255).astype(np.uint8)
    shifted = np.concatenate([imgs[5][:, :1], imgs[5][:, :-1]], axis=1)
    small = Image.fromarray(imgs[8][..., 0]).resize((25, 25), Image.BILINEAR)
    rescaled = np.asarray(small.resize((28, 28), Image.BILINEAR))[..., None]
    imgs = np.concatenate([imgs, noisy[None], shifted[None], rescaled[None]])
    assert ssim_pairs(imgs, np.array([2, 5]), np.array([30, 31])).max() < 0.95  # SSIM misses both
    hashes = [str(hash(im.tobytes())) for im in imgs]
    emb = imgs.reshape(len(imgs), -1).astype(np.float32)
    pairs, _ = find_duplicates(imgs, hashes, emb, np.array(["train"] * len(imgs)), ssim_threshold=0.95, k=3)
    found = {(p["a"], p["b"]): p for p in pairs}
    assert {(2, 30), (5, 31)} <= set(found) <= {(2, 30), (5, 31), (8, 32)}
    for pair in (found[(2, 30)], found[(5, 31)]):
        assert pair["kind"] == "near" and pair["measure"] == "aligned_pixels" and pair["similarity"] >= 0.99


def test_a_plain_part_with_a_small_defect_is_no_copy_of_one_without():
    # Inspection photos: 99.4% of the pixels agree, but a 5 x 5 scratch is content, not noise.
    rng = np.random.default_rng(0)
    parts = np.clip(200 + rng.normal(0, 2, (6, 64, 64, 1)), 0, 255).astype(np.uint8)
    for i, (y, x) in zip(range(3, 6), [(5, 40), (30, 12), (50, 50)]):
        parts[i, y:y + 5, x:x + 5] = 40
    resaved = np.clip(parts[4].astype(float) + rng.normal(0, 3, parts[4].shape), 0, 255).astype(np.uint8)
    parts = np.concatenate([parts, resaved[None]])
    labels = np.array(["ok"] * 3 + ["defect"] * 4)
    pairs, _ = find_duplicates(parts, [str(i) for i in range(7)], parts.reshape(7, -1).astype(np.float32),
                               np.array(["train", "val"] * 3 + ["train"]))
    assert not [p for p in pairs if labels[p["a"]] != labels[p["b"]]]
    assert (4, 6) in {(p["a"], p["b"]) for p in pairs}  # the defect photo saved again is still its copy


def test_exact_copies_do_not_hide_a_near_copy_and_every_copy_gets_its_leakage():
    # A (image 3) has five exact copies, its noisy re-save B (20) three: with k = 3 each image's
    # neighbours would be its own copies alone. One copy of B is in val.
    imgs = distinct_images(40, seed=7)
    imgs[20] = np.clip(imgs[3].astype(int) + np.random.default_rng(8).integers(-3, 4, imgs[3].shape), 0, 255)
    copies_a, copies_b = [3, 10, 11, 12, 13, 14], [20, 21, 22, 23]
    imgs[copies_a], imgs[copies_b] = imgs[3], imgs[20]
    hashes = [im.tobytes().hex() for im in imgs]
    splits = np.array(["train"] * 40)
    splits[22] = "val"
    pairs, group = find_duplicates(imgs, hashes, imgs.reshape(40, -1).astype(np.float32), splits, k=3)
    exact = [(p["a"], p["b"]) for p in pairs if p["kind"] == "exact"]
    near = [p for p in pairs if p["kind"] == "near"]
    assert exact == [(3, 10), (3, 11), (3, 12), (3, 13), (3, 14), (20, 21), (20, 22), (20, 23)]
    assert {i for p in near for i in (p["a"], p["b"])} == set(copies_a + copies_b)
    assert all(p["a"] in copies_a and p["b"] in copies_b and p["measure"] == "ssim" for p in near)
    assert len({p["ssim"] for p in near}) == 1 and near[0]["ssim"] >= 0.95
    # every copy of A has a near copy in val (22): each is in a cross-split pair
    assert {p["a"] for p in near if p["cross_split"]} == set(copies_a)
    assert (group[copies_a + copies_b] == 3).all() and (group >= 0).sum() == 10


def test_coarse_pixels_hold_one_chunk_as_float32_with_the_same_values(monkeypatch):
    import tracemalloc

    from ml_backend.detectors import duplicates

    imgs = np.random.default_rng(9).integers(0, 256, (300, 96, 96, 3), dtype=np.uint8)  # 8 MB
    monkeypatch.setattr(duplicates, "COARSE_PIXELS_PER_CHUNK", 10**9)
    whole = duplicates._coarse_pixels(imgs)
    monkeypatch.setattr(duplicates, "COARSE_PIXELS_PER_CHUNK", 1_000_000)  # 36 images a chunk
    tracemalloc.start()
    chunked = duplicates._coarse_pixels(imgs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(chunked, whole)
    assert peak < imgs.nbytes  # a float32 copy of all images at once is 4x their size
