"""MaskCut: bipartition rules, iterative cuts on two-blob feature maps, pixel refinement."""
import numpy as np
import pytest
import torch

from cad.discovery import maskcut as mc
from cad.discovery.maskcut import bipartition, maskcut_patch_masks, maskcut_refine

torch.set_num_threads(1)


def _blob_features(grid, blobs, noise=0.05, seed=0, dim=16):
    """(1, h*w, dim) features: background = e0, blob i = e(i+1), plus small noise."""
    labels = np.zeros(grid, dtype=int)
    for i, (r0, r1, c0, c1) in enumerate(blobs, start=1):
        labels[r0:r1, c0:c1] = i
    protos = torch.eye(len(blobs) + 1, dim)
    gen = torch.Generator().manual_seed(seed)
    feats = protos[torch.from_numpy(labels.reshape(-1))] + noise * torch.randn(labels.size, dim, generator=gen)
    return feats[None], labels


def test_partition_above_mean_holding_the_seed():
    v = np.zeros(16)
    v[[5, 6, 9]] = [3.0, 2.0, 2.5]
    v[15] = 1.0  # above the mean but not 4-connected to the seed
    mask = bipartition(v, (4, 4))
    assert set(np.flatnonzero(mask)) == {5, 6, 9}


def test_seed_outside_partition_reverses():
    # strongest entry negative: its side (below the mean) is the object
    v = np.full(16, 0.1)
    v[[0, 1]] = -2.0
    np.testing.assert_array_equal(np.flatnonzero(bipartition(v, (4, 4))), [0, 1])


def test_three_corners_reverse_even_when_seed_inside():
    # partition (above mean) = everything but the centre 2x2 and holds the seed: 4 corners -> reversed
    v = np.ones(16)
    v[[5, 6, 9, 10]] = -0.5
    v[0] = 2.0  # seed, in the corner-covering side
    np.testing.assert_array_equal(np.flatnonzero(bipartition(v, (4, 4))), [5, 6, 9, 10])
    # with the limit at 5 corners the rule never fires and the seed's side is kept
    assert bipartition(v, (4, 4), corner_limit=5).sum() == 12


def test_component_is_4_connected():
    v = np.zeros(9)
    v[[0, 4, 8]] = [3.0, 2.0, 2.0]  # diagonal chain: not 4-connected
    np.testing.assert_array_equal(np.flatnonzero(bipartition(v, (3, 3))), [0])


def test_two_blobs_are_the_first_two_cuts():
    feats, labels = _blob_features((20, 20), [(3, 9, 3, 9), (12, 18, 10, 18)])
    masks = maskcut_patch_masks(feats, (20, 20))
    assert masks.shape == (1, 3, 20, 20)
    found = {tuple(np.flatnonzero(m)) for m in masks[0, :2]}
    assert found == {tuple(np.flatnonzero(labels == 1)), tuple(np.flatnonzero(labels == 2))}
    # the third cut has nothing left but noise: whatever it returns must not repeat a blob
    assert not np.array_equal(masks[0, 2], masks[0, 1])


def test_batched_equals_single_images():
    a, _ = _blob_features((16, 16), [(2, 7, 2, 7)], seed=1)
    b, _ = _blob_features((16, 16), [(8, 14, 3, 12), (1, 5, 9, 15)], seed=2)
    both = maskcut_patch_masks(torch.cat([a, b]), (16, 16))
    np.testing.assert_array_equal(both[0], maskcut_patch_masks(a, (16, 16))[0])
    np.testing.assert_array_equal(both[1], maskcut_patch_masks(b, (16, 16))[0])


def test_small_later_cut_is_emptied_at_one_percent():
    # blob 2 has 4 patches = 1% of a 20x20 grid: emptied (area <= 1%); at min_area 0.009 it is kept
    feats, labels = _blob_features((20, 20), [(3, 11, 3, 11), (15, 17, 15, 17)])
    assert mc.MIN_AREA == 0.01
    masks = maskcut_patch_masks(feats, (20, 20), n_cuts=2)
    np.testing.assert_array_equal(masks[0, 0], labels == 1)
    assert not masks[0, 1].any()
    kept = maskcut_patch_masks(feats, (20, 20), n_cuts=2, min_area=0.009)
    np.testing.assert_array_equal(kept[0, 1], labels == 2)


def test_refine_subtracts_earlier_cuts_and_resizes_without_crf():
    cuts = np.zeros((3, 4, 4), dtype=bool)
    cuts[0, :2, :2] = True
    cuts[1, :2, :3] = True  # overlaps cut 0: only column 2 is its own
    image = np.zeros((30, 50, 3), dtype=np.uint8)
    out = maskcut_refine(cuts, image, crf=False, resolution=(40, 40))
    assert len(out) == 2 and all(m.shape == (30, 50) for m in out)
    # cut 0: top-left quarter of the 40x40 grid -> top-left quarter of the 30x50 image
    np.testing.assert_array_equal(np.argwhere(out[0]).min(0), [0, 0])
    np.testing.assert_array_equal(np.argwhere(out[0]).max(0) + 1, [15, 25])
    np.testing.assert_array_equal(np.argwhere(out[1]).min(0), [0, 25])
    np.testing.assert_array_equal(np.argwhere(out[1]).max(0) + 1, [15, 38])  # edge at 37.5 px
    assert not (out[0] & out[1]).any()


def test_refine_fills_holes_and_drops_masks_the_crf_disagrees_with():
    ring = np.zeros((1, 5, 5), dtype=bool)
    ring[0, 1:4, 1:4] = True
    ring[0, 2, 2] = False
    image = np.zeros((50, 50, 3), dtype=np.uint8)
    (filled,) = maskcut_refine(ring, image, crf=False, resolution=(50, 50))
    assert filled[20:30, 20:30].all()  # the hole is filled even without CRF
    # a CRF that returns a much smaller mask (IoU < 0.5) drops it; IoU >= 0.5 keeps it
    from cad.discovery import maskcut

    def shrink(_, raw):
        out = np.zeros(raw.shape, dtype=np.float32)
        ys, xs = np.nonzero(raw)
        out[ys.min() : ys.min() + 10, xs.min() : xs.max() + 1] = 1  # 10 of 30 rows: IoU 1/3
        return out

    orig = maskcut.dense_crf
    maskcut.dense_crf = shrink
    try:
        assert maskcut_refine(ring, image, crf=True, resolution=(50, 50)) == []
        assert len(maskcut_refine(ring, image, crf=True, resolution=(50, 50), crf_iou=0.3)) == 1
    finally:
        maskcut.dense_crf = orig


def test_refine_with_real_crf_snaps_to_the_object():
    image = np.full((64, 64, 3), 30, dtype=np.uint8)
    image[16:48, 16:48] = 220
    cuts = np.zeros((1, 8, 8), dtype=bool)
    cuts[0, 2:6, 3:7] = True  # off by one patch (8 px) to the right
    (mask,) = maskcut_refine(cuts, image, crf=True, resolution=(64, 64))
    truth = np.zeros((64, 64), dtype=bool)
    truth[16:48, 16:48] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.95


def test_grid_mismatch_fails_clearly():
    with pytest.raises(ValueError, match="patches"):
        maskcut_patch_masks(torch.zeros(1, 10, 4), (3, 3))


def test_round_off_cannot_choose_among_equal_entries():
    v = np.zeros(16)
    v[3], v[12] = 1.0, 1.0 + 2e-15  # equal up to solver noise, in different components
    np.testing.assert_array_equal(np.flatnonzero(bipartition(v, (4, 4))), [3])  # first index wins
    v[12] = 1.0 + 2e-9  # a real difference is kept
    np.testing.assert_array_equal(np.flatnonzero(bipartition(v, (4, 4))), [12])
