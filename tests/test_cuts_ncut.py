"""Normalized cut: binary affinity, eigensolvers against scipy's generalized solve, sign rule."""
import numpy as np
import pytest
import scipy.linalg
import torch

from cad.discovery.ncut import EPS, TAU, binary_affinity, cosine_matrix, fiedler_from_cosine, fiedler_vectors, fix_sign

torch.set_num_threads(1)


def _vectors_with_cosines(cosines):
    """Unit vectors v0, v1, ... in 2-D with cos(v0, vi) = cosines[i - 1]."""
    angles = [0.0] + [float(np.arccos(c)) for c in cosines]
    return torch.tensor([[np.cos(a), np.sin(a)] for a in angles], dtype=torch.float32)[None]


def test_affinity_is_binary_at_tau_with_eps_elsewhere():
    feats = _vectors_with_cosines([0.16, 0.14, -0.5]) * torch.tensor([1.0, 3.0, 0.5, 2.0])[None, :, None]
    aff = binary_affinity(feats)
    assert aff.dtype == torch.float64
    # cos 0.16 > 0.15 -> 1; cos 0.14, -0.5 -> eps; the diagonal (cos 1) is 1; scale is irrelevant.
    np.testing.assert_array_equal(aff[0, 0].numpy(), [1.0, 1.0, EPS, EPS])
    assert TAU == 0.15 and EPS == 1e-5
    # moving tau above 0.16 cuts the edge: a changed threshold changes the graph
    assert binary_affinity(feats, tau=0.2)[0, 0, 1] == EPS


def test_zero_features_are_disconnected_with_eps_like_inactive_patches():
    feats = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(0))
    active = torch.ones(1, 5, dtype=torch.bool)
    active[0, 2] = False
    masked = binary_affinity(feats, active=active)
    feats[0, 2] = 0
    aff = binary_affinity(feats)
    assert torch.all(aff[0, 2] == EPS) and torch.all(aff[0, :, 2] == EPS)
    torch.testing.assert_close(masked, aff, rtol=0, atol=0)


def _two_cliques(n1, n2, dim=8):
    feats = torch.zeros(1, n1 + n2, dim)
    feats[0, :n1, 0] = 1.0
    feats[0, n1:, 1] = 1.0
    return feats


@pytest.mark.parametrize("solver", ["lanczos", "eigh"])
def test_two_weakly_connected_cliques_are_the_cut(solver):
    n1, n2 = 7, 13
    x = fiedler_vectors(_two_cliques(n1, n2), solver=solver)[0].numpy()
    # piecewise constant, D-orthogonal to 1: n1 * d1 * a + n2 * d2 * b = 0 with d = clique size + eps * rest
    a, b = x[:n1], x[n1:]
    assert np.ptp(a) < 1e-9 and np.ptp(b) < 1e-9
    d1, d2 = n1 + EPS * n2, n2 + EPS * n1
    assert abs(n1 * d1 * a[0] + n2 * d2 * b[0]) < 1e-9
    # x^T D x = 1 (scipy's normalisation), sign rule: the larger-magnitude side (small clique) > 0
    assert abs(n1 * d1 * a[0] ** 2 + n2 * d2 * b[0] ** 2 - 1.0) < 1e-9
    assert a[0] > 0 > b[0]


@pytest.mark.parametrize("solver", ["lanczos", "eigh"])
def test_equals_scipy_generalized_solve_up_to_sign(solver):
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(3, 150, 12, generator=gen)
    feats[1, :60] += 2.5 * torch.randn(1, 12, generator=gen)  # a strong cluster
    feats[2, 100:] = 0  # masked-out patches as MaskCut makes them
    x = fiedler_vectors(feats, solver=solver).numpy()
    y = fiedler_vectors(feats, solver=solver, generalized=False).numpy()
    aff = binary_affinity(feats).numpy()
    for b in range(3):
        deg = aff[b].sum(1)
        vals, vecs = scipy.linalg.eigh(np.diag(deg) - aff[b], np.diag(deg), subset_by_index=[1, 2])
        ref = vecs[:, 0]
        assert min(np.abs(ref - x[b]).max(), np.abs(ref + x[b]).max()) < 1e-7 * np.abs(ref).max()
        # generalized=False is the unit eigenvector of L = I - D^-1/2 A D^-1/2, y = D^1/2 x
        lap = np.eye(len(deg)) - aff[b] / np.sqrt(np.outer(deg, deg))
        np.testing.assert_allclose(lap @ y[b], vals[0] * y[b], atol=1e-8)
        np.testing.assert_allclose(y[b], x[b] * np.sqrt(deg) / np.linalg.norm(x[b] * np.sqrt(deg)), atol=1e-8)


def test_solvers_agree_exactly_in_sign():
    feats = torch.randn(2, 200, 16, generator=torch.Generator().manual_seed(5))
    a = fiedler_vectors(feats, solver="lanczos")
    b = fiedler_vectors(feats, solver="eigh")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-8)


def test_sign_rule():
    v = torch.tensor([[0.1, -0.9, 0.3], [0.5, 0.2, -0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    out = fix_sign(v)
    np.testing.assert_array_equal(out.numpy(), [[-0.1, 0.9, -0.3], [0.5, 0.2, -0.5], [0.0, 0.0, 0.0]])


def test_bad_shapes_and_solver_fail_clearly():
    with pytest.raises(ValueError, match="B, N, C"):
        binary_affinity(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="solver"):
        fiedler_vectors(torch.zeros(1, 4, 3), solver="arpack")


def test_inactive_patches_equal_zeroed_features():
    feats = torch.randn(2, 120, 8, generator=torch.Generator().manual_seed(9))
    active = torch.rand(2, 120, generator=torch.Generator().manual_seed(1)) > 0.3
    via_mask = fiedler_from_cosine(cosine_matrix(feats), active=active)
    zeroed = fiedler_vectors(feats * active[:, :, None])
    torch.testing.assert_close(via_mask, zeroed, rtol=0, atol=1e-9)


def test_lanczos_falls_back_to_dense_when_not_converged():
    feats = torch.randn(1, 80, 8, generator=torch.Generator().manual_seed(2))
    # one restart of a 2-dimensional Krylov space cannot converge: the dense solver takes over
    rough = fiedler_vectors(feats, krylov_dim=2, restarts=1)
    torch.testing.assert_close(rough, fiedler_vectors(feats, solver="eigh"), rtol=0, atol=1e-9)
