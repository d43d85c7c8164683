"""VoteCut: k-means proposals, corner/component filters, IoU clustering, voting, refinement."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cad.discovery import votecut as vc
from cad.discovery.ncut import fiedler_vectors
from cad.discovery.votecut import (
    cluster_by_iou,
    kmeans_labelings,
    pairwise_iou,
    proposals_from_labels,
    refine_voted_mask,
    resize_proposals,
    vote,
    votecut_masks,
)

torch.set_num_threads(1)


def test_kmeans_labelings_order_and_groups():
    a = np.array([[0.0, 0.01, 1.0], [1.02, 0.02, 0.99]])
    b = np.array([[0.0, 5.0], [10.0, 5.1]])
    labs = kmeans_labelings([a, b])
    assert len(labs) == 4 and labs[0].shape == (2, 3) and labs[2].shape == (2, 2)
    low = a < 0.5
    assert len(np.unique(labs[0][low])) == 1 and len(np.unique(labs[0][~low])) == 1
    assert labs[0][low][0] != labs[0][~low][0]
    assert len(np.unique(labs[3])) == 3  # model b, k = 3: three value groups


def test_corner_filter_two_corners_skip_one_corner_kept():
    labels = np.zeros((12, 12), dtype=int)
    labels[0, :] = 1  # top row: 2 corners -> background
    labels[6:12, 6:12] = 2  # touches 1 corner -> kept
    props = proposals_from_labels(labels)
    kept = [set(np.flatnonzero(p)) for p in props]
    assert set(np.flatnonzero(labels == 2)) in kept
    assert set(np.flatnonzero(labels == 1)) not in kept
    assert vc.CORNER_LIMIT == 2
    # with the limit at 3 the top row (2 corners) becomes a proposal
    assert set(np.flatnonzero(labels == 1)) in [set(np.flatnonzero(p)) for p in proposals_from_labels(labels, corner_limit=3)]


def _label_with_components(n_small, big=True):
    """Label 1 = `n_small` isolated pixels + (optionally) one 5x1 bar, on a 40x40 grid of label 0."""
    labels = np.zeros((40, 40), dtype=int)
    cells = [(r, c) for r in range(2, 38, 2) for c in range(2, 30, 2)][:n_small]
    for r, c in cells:
        labels[r, c] = 1
    if big:
        labels[35, 32:37] = 1  # 5 wide, 1 high: kept (the size rule needs BOTH sides < 5)
    return labels


def test_component_count_and_size_filters():
    def bars(labels):
        return [p for p in proposals_from_labels(labels) if labels[p].min() == 1]

    # 29 single pixels (dropped: bbox 1x1 < 5x5) + the bar = 30 components: the bar survives
    assert [int(p.sum()) for p in bars(_label_with_components(29))] == [5]
    # 31 components: the whole label is skipped
    assert bars(_label_with_components(30)) == []
    assert vc.MAX_COMPONENTS == 30 and vc.MIN_BOX == 5
    # a 4x4 square is dropped, 4x5 kept
    labels = np.zeros((20, 20), dtype=int)
    labels[2:6, 2:6] = 1
    labels[10:14, 10:15] = 2
    sizes = sorted(int(p.sum()) for p in proposals_from_labels(labels) if p.sum() < 100)
    assert sizes == [20]


def test_components_are_4_connected_in_raster_order():
    labels = np.zeros((12, 12), dtype=int)
    labels[6:11, 6:11] = 1
    labels[1:6, 1:6] = 1  # touches the first square only diagonally at (5,5)-(6,6)
    props = proposals_from_labels(labels)
    ones = [p for p in props if labels[p].min() == 1]
    assert len(ones) == 2 and ones[0][1, 1] and ones[1][10, 10]


def test_resize_proposals_is_nearest_floor_mapping():
    prop = np.zeros((34, 34), dtype=bool)
    prop[10:20, 3:7] = True
    out = resize_proposals([prop])[0]
    src = np.floor(np.arange(60) * 34 / 60).astype(int)
    ref = F.interpolate(torch.from_numpy(prop)[None, None].float(), size=(60, 60), mode="nearest")[0, 0] > 0.5
    np.testing.assert_array_equal(out, ref.numpy())
    np.testing.assert_array_equal(out, prop[np.ix_(src, src)])


def test_pairwise_iou():
    m = np.zeros((3, 1, 5), dtype=bool)
    m[0, 0, :3] = True
    m[1, 0, 1:5] = True
    np.testing.assert_allclose(pairwise_iou(m), [[1, 0.4, 0], [0.4, 1, 0], [0, 0, 0]])


def _ious(pairs, n):
    iou = np.eye(n)
    for (i, j), v in pairs.items():
        iou[i, j] = iou[j, i] = v
    return iou


def test_iou_threshold_is_strict():
    assert [c.tolist() for c in cluster_by_iou(_ious({(0, 1): 0.6}, 2))] == [[0], [1]]
    assert [c.tolist() for c in cluster_by_iou(_ious({(0, 1): 0.61}, 2))] == [[0, 1]]
    assert [c.tolist() for c in cluster_by_iou(_ious({(0, 1): 0.6}, 2), threshold=0.5)] == [[0, 1]]


def test_stable_order_on_equal_counts():
    iou = _ious({(2, 3): 0.9}, 5)  # counts 1, 1, 2, 2, 1
    assert [c.tolist() for c in cluster_by_iou(iou)] == [[2, 3], [0], [1], [4]]


def test_pivot_moves_to_largest_iou_sum_and_grows():
    pairs = {(1, 0): 0.61, (1, 2): 0.9, (1, 3): 0.61, (2, 3): 0.9, (2, 4): 0.61, (0, 2): 0.5, (0, 3): 0.3,
             (3, 4): 0.3, (0, 4): 0.1, (1, 4): 0.5}
    iou = _ious(pairs, 5)
    # start at 1 (4 partners, first on the tie with 2); pivot moves to 2, which brings in 4
    assert [c.tolist() for c in cluster_by_iou(iou)] == [[0, 1, 2, 3, 4]]
    # with one round the pivot moves but the cluster does not grow again; 4 then starts its own
    # cluster {2, 4} whose pivot (2, first on the IoU-sum tie) is used: discarded
    assert [c.tolist() for c in cluster_by_iou(iou, rounds=1)] == [[0, 1, 2, 3]]


def test_cluster_whose_pivot_is_used_is_discarded():
    iou = _ious({(0, 1): 0.7, (0, 2): 0.7, (1, 2): 0.3, (2, 3): 0.7}, 4)
    # 0 -> {0,1,2}; then 3 -> {2,3}, pivot ties -> 2 (used): discarded, 3 becomes used
    assert [c.tolist() for c in cluster_by_iou(iou)] == [[0, 1, 2]]


def test_vote_is_strictly_above_twenty_percent():
    masks = np.zeros((5, 1, 3), dtype=bool)
    masks[0, 0, 0] = True  # 1 of 5 votes = 0.2: out
    masks[:2, 0, 1] = True  # 2 of 5: in
    masks[:, 0, 2] = True
    np.testing.assert_array_equal(vote(masks, np.arange(5))[0], [False, True, True])
    np.testing.assert_array_equal(vote(masks, np.arange(5), threshold=0.1)[0], [True, True, True])
    np.testing.assert_array_equal(vote(masks, np.array([0, 1]))[0], [True, True, True])


def test_refine_without_crf_fills_holes_and_with_crf_snaps():
    grid = np.zeros((6, 6), dtype=bool)
    grid[1:5, 1:5] = True
    grid[2, 2] = False
    image = np.full((60, 60, 3), 20, dtype=np.uint8)
    image[10:50, 10:50] = 230
    mask, ok, error = refine_voted_mask(grid, image, crf=False)
    assert not ok and error is None and mask[10:50, 10:50].all() and mask.sum() == 1600
    shifted = np.zeros((6, 6), dtype=bool)
    shifted[1:5, 2:6] = True  # one cell (10 px) right of the bright square
    mask, ok, error = refine_voted_mask(shifted, image, crf=True)
    truth = np.zeros((60, 60), dtype=bool)
    truth[10:50, 10:50] = True
    assert ok and error is None and (mask & truth).sum() / (mask | truth).sum() > 0.95


def test_refine_falls_back_when_crf_fails_or_disagrees(monkeypatch):
    grid = np.zeros((6, 6), dtype=bool)
    grid[2:4, 2:4] = True
    image = np.zeros((60, 60, 3), dtype=np.uint8)
    up = np.kron(grid, np.ones((10, 10), dtype=bool))

    def empty(img, m):
        return np.zeros(m.shape, dtype=np.float32)

    def boom(img, m):
        raise RuntimeError("crf failed")

    for fake, expected_error in ((empty, None), (boom, "RuntimeError: crf failed")):
        monkeypatch.setattr(vc, "dense_crf", fake)
        mask, ok, error = refine_voted_mask(grid, image)
        assert not ok and error == expected_error
        np.testing.assert_array_equal(mask, up)


def _eigvecs(blobs, grids=(30, 34, 34, 30, 60, 60)):
    """Per-model eigenvectors (h, h) of blob feature maps (blobs as fractions of the side)."""
    out = []
    for h in grids:
        labels = np.zeros((h, h), dtype=int)
        for i, (r0, r1, c0, c1) in enumerate(blobs, start=1):
            labels[int(r0 * h) : int(r1 * h), int(c0 * h) : int(c1 * h)] = i
        gen = torch.Generator().manual_seed(h)
        feats = torch.eye(len(blobs) + 1, 16)[torch.from_numpy(labels.ravel())]
        feats = feats + 0.05 * torch.randn(h * h, 16, generator=gen)
        out.append(fiedler_vectors(feats[None], generalized=False)[0].numpy().reshape(h, h))
    return out


def test_votecut_finds_two_blobs_ordered_by_votes():
    blobs = [(0.2, 0.5, 0.2, 0.5), (0.6, 0.9, 0.55, 0.9)]
    vectors = _eigvecs(blobs)
    image = np.zeros((120, 120, 3), dtype=np.uint8)
    out = votecut_masks(vectors, image, crf=False)
    sizes = [m.cluster_size for m in out]
    assert sizes == sorted(sizes, reverse=True) and len(out) <= vc.MAX_MASKS
    for r0, r1, c0, c1 in blobs:
        truth = np.zeros((120, 120), dtype=bool)
        truth[int(r0 * 120) : int(r1 * 120), int(c0 * 120) : int(c1 * 120)] = True
        best = max((m.mask & truth).sum() / (m.mask | truth).sum() for m in out[:3])
        assert best > 0.85
    assert votecut_masks(vectors, image, crf=False, max_masks=1)[0].cluster_size <= sizes[0]
    assert len(votecut_masks(vectors, image, crf=False, max_masks=1)) == 1


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_no_proposal_gives_no_mask():
    flat = [np.zeros((30, 30)) for _ in range(2)]  # k-means on constant values: one label, 4 corners
    assert votecut_masks(flat, np.zeros((30, 30, 3), dtype=np.uint8), crf=False) == []
