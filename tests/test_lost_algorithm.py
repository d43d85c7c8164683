"""LOST pure functions on hand-built key matrices (degree, seed, expansion, mask, box, multi-object)."""
import numpy as np
import pytest
import torch

from cad.discovery.lost import K_PATCHES, lost, lost_degree, lost_multi, seed_component_box

torch.set_num_threads(1)
P = 16  # patch size of the hand-built examples


def _grid_keys(rows, cols, default, assignments):
    """Keys (rows*cols, C) float64: `default` everywhere, `assignments` {(r, c): key}."""
    keys = torch.tensor(default, dtype=torch.float64).repeat(rows * cols, 1)
    for (r, c), key in assignments.items():
        keys[r * cols + c] = torch.tensor(key, dtype=torch.float64)
    return keys


# 4x6 grid. Background b = (1, 0, 0). Object O = 2x2 block rows 1-2, cols 1-2: (1,1) has
# o' = (0, 1, 0) (similarity exactly 0 with the background), the others o = (-1, 1, 0).
# D = (-3, 3, 3) at (3, 0): a large-norm object-like patch, diagonal to the block.
# Q = (1, 0, 3) at (2, 3): background-like, right of the block.
EXAMPLE = _grid_keys(
    4,
    6,
    (1.0, 0.0, 0.0),
    {
        (1, 1): (0.0, 1.0, 0.0),
        (1, 2): (-1.0, 1.0, 0.0),
        (2, 1): (-1.0, 1.0, 0.0),
        (2, 2): (-1.0, 1.0, 0.0),
        (3, 0): (-3.0, 3.0, 3.0),
        (2, 3): (1.0, 0.0, 3.0),
    },
)


def test_degree_counts_strictly_positive_similarities_without_self():
    degree = lost_degree(EXAMPLE).view(4, 6)
    # o' = (1,1): positive with the 3 o patches and D (o'.D = 3); 0 with b and Q is not counted.
    assert degree[1, 1] == 4
    # o: o' (1), the 2 other o (2), D (6) -> 4; b (-1) and Q (-1) are negative.
    assert degree[1, 2] == degree[2, 1] == degree[2, 2] == 4
    # D: o' and the 3 o, plus Q (D.Q = -3 + 9 = 6) -> 5.
    assert degree[3, 0] == 5
    # Q: the 18 background patches and D -> 19; a background patch: 17 others + Q -> 18.
    assert degree[2, 3] == 19
    assert degree[0, 0] == 18


def test_seed_expansion_mask_and_box_follow_the_reference_rules():
    result = lost(EXAMPLE, (4, 6), P, image_size=(60, 90))
    # Lowest degree (4) is shared by o', the o patches; the lowest index wins -> o' at (1, 1).
    # (Counting A >= 0 would give o' degree 4 + 19 and make (1, 2) the seed.)
    assert result.seed == 1 * 6 + 1
    # k = 100 > 24 patches: the pool is every patch; positive with o': itself, the o patches, D.
    assert sorted(result.expansion.tolist()) == [7, 8, 13, 14, 18]
    # Sum of the expansion keys: o' + 3 o + D = (-6, 7, 3). Mask = patches with positive dot:
    # o' (7), o (13), D (48), Q (-6 + 9 = 3 > 0); background -6 < 0. With L2-normalised keys the
    # sum is o' + 3 o/sqrt2 + D/sqrt27 and Q gets (-3/sqrt2 - 3/sqrt27 + 9/sqrt27)/sqrt10 < 0.
    expected_mask = np.zeros((4, 6), dtype=bool)
    expected_mask[1:3, 1:3] = True
    expected_mask[3, 0] = expected_mask[2, 3] = True
    np.testing.assert_array_equal(result.mask, expected_mask)
    # 4-connected component of the seed: the block and Q (D is only diagonal: 8-connectivity
    # would add it and give [0, 16, 64, 64]).
    expected_component = expected_mask.copy()
    expected_component[3, 0] = False
    np.testing.assert_array_equal(result.component, expected_component)
    np.testing.assert_array_equal(result.box, [16, 16, 64, 48])


def test_variants_of_the_rules_change_the_result():
    # Normalised keys: same degrees and seed, but Q leaves the mask and the box shrinks.
    normalised = lost(torch.nn.functional.normalize(EXAMPLE, dim=1), (4, 6), P, image_size=(60, 90))
    assert normalised.seed == 7
    np.testing.assert_array_equal(normalised.box, [16, 16, 48, 48])


def test_expansion_pool_is_the_100_lowest_degree_patches():
    # 12x12 grid, 2-D keys: O = o = (0, 1) on the 2x2 top-left block, then in raster order 40
    # patches b = (1, -0.1) and 100 patches g = (1, 0.05).
    # Degrees: O 3 + 100 (g) = 103; b 39 + 100 = 139; g 99 + 4 + 40 = 143 (o.b < 0).
    # Pool (k = 100) = O, all b, the first 56 g; positive with the seed: O and those 56 g.
    keys = torch.empty(144, 2, dtype=torch.float64)
    block = [0, 1, 12, 13]
    rest = [i for i in range(144) if i not in block]
    keys[block] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    keys[rest[:40]] = torch.tensor([1.0, -0.1], dtype=torch.float64)
    keys[rest[40:]] = torch.tensor([1.0, 0.05], dtype=torch.float64)
    assert K_PATCHES == 100
    result = lost(keys, (12, 12), P, image_size=(192, 192))
    assert result.seed == 0
    assert sorted(result.expansion.tolist()) == sorted(block + rest[40:96])
    assert len(lost(keys, (12, 12), P, image_size=(192, 192), k=50).expansion) == 4 + 6


def test_box_clips_only_the_max_side_to_the_image():
    mask = np.zeros((4, 6), dtype=bool)
    mask[2:, 4:] = True  # touches the bottom-right corner of the padded grid (64 x 96)
    component, box = seed_component_box(mask, 3 * 6 + 5, 16, image_size=(60, 90))
    np.testing.assert_array_equal(box, [64, 32, 90, 60])
    assert component.sum() == 4


def _reference_lost(keys, grid, p, image_size, k=100):
    """The reference computation, dense: A = K K^T, zero diagonal, count > 0, argsort, label."""
    a = keys @ keys.T
    a_nodiag = a.clone()
    a_nodiag.fill_diagonal_(0)
    degree = (a_nodiag > 0).sum(1)
    order = torch.sort(degree, stable=True).indices
    seed = order[0]
    pool = order[:k]
    similars = pool[a[seed, pool] > 0]
    mask = (a[similars].sum(0) > 0).view(grid).numpy()
    return int(seed), sorted(similars.tolist()), seed_component_box(mask, int(seed), p, image_size)[1]


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_dense_reference_formula_on_random_keys(seed):
    generator = torch.Generator().manual_seed(seed)
    grid = (14, 17)
    keys = torch.randn(grid[0] * grid[1], 8, generator=generator, dtype=torch.float64)
    keys[:, 0] += 1.5  # a dominant "background" direction, as with real keys
    keys[40:46, 0] -= 4.0
    result = lost(keys, grid, 8, image_size=(110, 130))
    ref_seed, ref_expansion, ref_box = _reference_lost(keys, grid, 8, (110, 130))
    assert result.seed == ref_seed
    assert sorted(result.expansion.tolist()) == ref_expansion
    np.testing.assert_array_equal(result.box, ref_box)


def _two_objects():
    # 6x8 grid, background b = (1, 0, 0); A = (-1, 1, 0) on a 2x2 block (rows 0-1, cols 0-1);
    # B = (-1, -1, 0) on a 3x3 block (rows 2-4, cols 4-6). A.B = 0, both negative with b.
    keys = _grid_keys(6, 8, (1.0, 0.0, 0.0), {})
    for r in range(2):
        for c in range(2):
            keys[r * 8 + c] = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    for r in range(2, 5):
        for c in range(4, 7):
            keys[r * 8 + c] = torch.tensor([-1.0, -1.0, 0.0], dtype=torch.float64)
    return keys


def test_multi_object_ranks_objects_and_stops_on_a_background_seed():
    keys = _two_objects()
    objects = lost_multi(keys, (6, 8), P, image_size=(96, 128), max_objects=5)
    # 1st: A (degree 3 of 47 others); 2nd: B (degree 8 of the 43 left); 3rd seed would be
    # background (degree 34 of the 34 others left: score 0 <= 0.5) -> stop.
    assert len(objects) == 2
    np.testing.assert_array_equal(objects[0].box, [0, 0, 32, 32])
    np.testing.assert_array_equal(objects[1].box, [64, 32, 112, 80])
    assert objects[0].score == pytest.approx(1 - 3 / 47)
    assert objects[1].score == pytest.approx(1 - 8 / 43)
    single = lost(keys, (6, 8), P, image_size=(96, 128))
    np.testing.assert_array_equal(single.box, objects[0].box)
    assert len(lost_multi(keys, (6, 8), P, image_size=(96, 128), max_objects=1)) == 1


@pytest.mark.parametrize("seed", range(3))
def test_multi_object_top_box_is_the_single_object_box(seed):
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(20 * 20, 16, generator=generator)
    keys[:, 0] += 1.0
    single = lost(keys, (20, 20), 16, image_size=(310, 315))
    objects = lost_multi(keys, (20, 20), 16, image_size=(310, 315), max_objects=10, min_score=0.0)
    np.testing.assert_array_equal(objects[0].box, single.box)
    assert objects[0].seed == single.seed
    scores = [o.score for o in objects]
    assert scores == sorted(scores, reverse=True)
    # Discovered components are disjoint.
    total = np.sum([o.component for o in objects], axis=0)
    assert total.max() == 1
