"""Normalized cut on ViT patch features: binary cosine affinity and the batched Fiedler vector.

MaskCut (CutLER) and VoteCut (CuVLER) build the same graph from L2-normalised patch features
F (N, C): A_ij = 1 if cos(F_i, F_j) > tau else eps, in float64, the diagonal included
(CutLER README tau = 0.15, eps = 1e-5; CuVLER `votecut/ncut.py` tau = 0.15, eps = 1e-5).
With D = diag(A 1) the normalized cut relaxation is the generalized problem
(D - A) x = lambda D x. We solve the equivalent symmetric problem on the normalised Laplacian
L = D^-1/2 (D - A) D^-1/2 (eigenvector y, ||y|| = 1) and return

- `generalized=True`: x = D^-1/2 y, exactly scipy's `eigh(D - A, D)` vector (x^T D x = 1;
  CutLER's MaskCut uses this one);
- `generalized=False`: y itself (CuVLER's VoteCut clusters y, the eigenvector of L).

Solvers (same answer up to round-off, see tests/test_cuts_ncut.py):

- "lanczos" (default): the second-smallest eigenvector of L is the largest eigenvector of
  M = D^-1/2 A D^-1/2 = I - L once its known top eigenvector u = D^1/2 1 / ||D^1/2 1||
  (eigenvalue 1) is projected out. Batched Lanczos with full re-orthogonalisation on all images
  at once (`krylov_dim` matrix-vector products per restart, Rayleigh-Ritz on the small
  tridiagonal problem, restarted from the Ritz vector) until ||M y - mu y|| <= `residual_tol`;
  an image that has not converged after `restarts` restarts is solved densely. On a 60x60 grid
  (N = 3600) it takes tens of products instead of an O(N^3) dense solve.
- "eigh": dense `torch.linalg.eigh` of L (all eigenpairs, batched), CuVLER's solver.

Sign rule (eigenvectors are defined up to sign, and LAPACK's choice differs between CPU, CUDA and
solvers): every returned vector is flipped so that its entry of largest magnitude is positive
(first such entry on ties). MaskCut's partition then always starts from the side of the
strongest patch, which makes its corner rule deterministic. When the second eigenvalue is
(nearly) degenerate the eigenvector itself is not unique and solvers may return different vectors
of that eigenspace (scipy's choice is arbitrary too); cad's Lanczos start is seeded, so its
choice is reproducible and the same for an image alone or in a batch.
"""
import logging
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["cosine_matrix", "binary_affinity", "fiedler_from_cosine", "fiedler_vectors", "ncut_eigenvectors", "fix_sign"]

logger = logging.getLogger(__name__)

TAU = 0.15  # cosine threshold of the binary graph (CutLER README, CuVLER ncut(tau=0.15))
EPS = 1e-5  # weight of the edges below the threshold (CutLER/CuVLER eps=1e-5)
SOLVERS = ("lanczos", "eigh")


def cosine_matrix(feats: torch.Tensor) -> torch.Tensor:
    """(B, N, C) features -> (B, N, N) cosines, in the features' dtype as the references do.

    All-zero rows (masked-out patches) have cosine 0 with everything.
    """
    if feats.ndim != 3:
        raise ValueError(f"feats must be (B, N, C), got {tuple(feats.shape)}")
    unit = F.normalize(feats, p=2, dim=-1)
    return unit @ unit.transpose(1, 2)


def _binary(cos: torch.Tensor, tau: float, eps: float, active: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, N, N) cosines -> float64 binary graph; pairs with an inactive patch count as cosine 0."""
    edge = cos > tau
    if active is not None:
        pair = active[:, :, None] & active[:, None, :]
        edge = edge & pair if tau >= 0 else edge | ~pair
    return torch.full(edge.shape, eps, dtype=torch.float64, device=cos.device).masked_fill_(edge, 1.0)


def binary_affinity(
    feats: torch.Tensor, tau: float = TAU, eps: float = EPS, active: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Binary cosine graph of patch features.

    feats: (B, N, C); active: optional (B, N) bool, False = masked-out patch (as if its features
    were zero). Returns A: (B, N, N) float64, 1.0 where cos > tau and `eps` elsewhere.
    """
    return _binary(cosine_matrix(feats), tau, eps, active)


def fix_sign(vectors: torch.Tensor) -> torch.Tensor:
    """Flip each row of (B, N) so that its largest-magnitude entry (first on ties) is positive."""
    peak = vectors.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(vectors, -1, peak))
    return vectors * torch.where(sign == 0, torch.ones_like(sign), sign)


def _dense_vectors(norm_aff: torch.Tensor, num: int = 1) -> torch.Tensor:
    """(B, N, N) M = D^-1/2 A D^-1/2 -> (B, num, N) unit eigenvectors of L = I - M with the 2nd to
    (num + 1)-th smallest eigenvalues (CuVLER's `ncut`: `eigh(L)[..., 1:eig_vecs + 1]`)."""
    eye = torch.eye(norm_aff.shape[-1], dtype=norm_aff.dtype, device=norm_aff.device)
    _, vecs = torch.linalg.eigh(eye - norm_aff)
    return vecs[..., 1 : num + 1].transpose(1, 2)


def _dense_second(norm_aff: torch.Tensor) -> torch.Tensor:
    """(B, N, N) M -> (B, N) unit eigenvectors of L = I - M, second-smallest eigenvalue."""
    return _dense_vectors(norm_aff)[:, 0]


def _project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """x (B, N) minus its components on the orthonormal columns of basis (B, N, k), twice (stability)."""
    for _ in range(2):
        x = x - torch.einsum("bnk,bk->bn", basis, torch.einsum("bnk,bn->bk", basis, x))
    return x


def _matvec(mats: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """(B, N, N) @ (B, N) -> (B, N); one gemv per image (faster on CPU than bmm with one column:
    docs/benchmarks.md, "Notes behind choices in the code")."""
    return torch.stack([torch.mv(m, v) for m, v in zip(mats, vecs)])


def _lanczos_second(
    norm_aff: torch.Tensor,
    top: torch.Tensor,
    seed: int,
    krylov_dim: int,
    restarts: int,
    residual_tol: float,
    check_every: int = 8,
) -> torch.Tensor:
    """Largest eigenvector of M restricted to top-perp, batched. norm_aff (B, N, N), top (B, N) unit.

    The Ritz pair is checked every `check_every` products; the run stops as soon as every image's
    residual ||M y - mu y|| is <= `residual_tol`. Returns (B, N) unit vectors; rows that did not
    converge within `restarts` restarts of `krylov_dim` products are NaN.
    """
    batch, n, _ = norm_aff.shape
    dim = min(krylov_dim, n - 1)
    device = norm_aff.device
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def draw() -> torch.Tensor:
        # every image gets the same seeded draws, so a batch gives each image's single-image result
        return torch.randn(1, n, generator=gen, dtype=torch.float64).expand(batch, n).to(device)

    top_basis = top[:, :, None]
    vec = F.normalize(_project_out(draw(), top_basis), dim=-1)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    result = torch.full_like(vec, float("nan"))
    for _ in range(restarts):
        basis = torch.zeros(batch, n, dim, dtype=torch.float64, device=device)
        images = torch.zeros_like(basis)  # M applied to each basis column
        q = vec
        for j in range(dim):
            basis[:, :, j] = q
            images[:, :, j] = _matvec(norm_aff, q)
            if (j + 1) % check_every == 0 or j + 1 == dim:
                b, m = basis[:, :, : j + 1], images[:, :, : j + 1]
                small = b.transpose(1, 2) @ m
                vals, vecs = torch.linalg.eigh((small + small.transpose(1, 2)) / 2)
                ritz_val, ritz = vals[:, -1], vecs[:, :, -1]
                vec = F.normalize(torch.einsum("bnk,bk->bn", b, ritz), dim=-1)
                residual = (torch.einsum("bnk,bk->bn", m, ritz) - ritz_val[:, None] * vec).norm(dim=-1)
                newly = (residual <= residual_tol) & ~done
                result[newly] = vec[newly]
                done |= newly
                if bool(done.all()) or j + 1 == dim:
                    break
            w = _project_out(_project_out(images[:, :, j], top_basis), basis[:, :, : j + 1])
            norm = w.norm(dim=-1, keepdim=True)
            fresh = _project_out(_project_out(draw(), top_basis), basis[:, :, : j + 1])
            # breakdown (invariant subspace found): continue with a fresh orthogonal direction
            q = F.normalize(torch.where(norm > 1e-10, w, fresh), dim=-1)
        if bool(done.all()):
            break
    return result


def _normalized_affinity(cos: torch.Tensor, tau: float, eps: float, active: Optional[torch.Tensor]):
    """(M = D^-1/2 A D^-1/2, degrees, D^-1/2) of the binary graphs of cosines (B, N, N)."""
    aff = _binary(cos, tau, eps, active)
    deg = aff.sum(dim=-1)
    inv_sqrt = deg.rsqrt()
    return aff.mul_(inv_sqrt[:, :, None]).mul_(inv_sqrt[:, None, :]), deg, inv_sqrt


def ncut_eigenvectors(feats: torch.Tensor, num: int, tau: float = TAU, eps: float = EPS, chunk: int = 4) -> torch.Tensor:
    """(B, num, N) float64: the unit eigenvectors of L with the 2nd to (num + 1)-th smallest
    eigenvalues of each image's binary cosine graph (feats (B, N, C)), by dense `eigh` as CuVLER's
    `ncut(eig_vecs=num)`, each sign-fixed (`fix_sign`). num = 1 is `fiedler_vectors(generalized=False,
    solver="eigh")`."""
    parts = []
    for i in range(0, feats.shape[0], chunk):
        norm_aff, _, _ = _normalized_affinity(cosine_matrix(feats[i : i + chunk]), tau, eps, None)
        vecs = _dense_vectors(norm_aff, num)
        parts.append(fix_sign(vecs.reshape(-1, vecs.shape[-1])).reshape(vecs.shape))
    return torch.cat(parts)


def fiedler_from_cosine(
    cos: torch.Tensor,
    tau: float = TAU,
    eps: float = EPS,
    active: Optional[torch.Tensor] = None,
    generalized: bool = True,
    solver: str = "lanczos",
    seed: int = 0,
    krylov_dim: int = 48,
    restarts: int = 20,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Fiedler vectors (B, N) float64 of the binary graphs of cosines (B, N, N); see module doc.

    active: optional (B, N) bool, False = masked-out patch (cosine 0 with everything).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got '{solver}'")
    norm_aff, deg, inv_sqrt = _normalized_affinity(cos, tau, eps, active)
    if solver == "eigh":
        vecs = _dense_second(norm_aff)
    else:
        top = F.normalize(deg.sqrt(), dim=-1)
        vecs = _lanczos_second(norm_aff, top, seed, krylov_dim, restarts, residual_tol)
        failed = torch.isnan(vecs).any(dim=-1)
        if bool(failed.any()):
            logger.debug("Lanczos did not converge on %d graph(s); dense eigh instead", int(failed.sum()))
            vecs[failed] = _dense_second(norm_aff[failed])
    if generalized:
        vecs = vecs * inv_sqrt
    return fix_sign(vecs)


def fiedler_vectors(
    feats: torch.Tensor,
    tau: float = TAU,
    eps: float = EPS,
    generalized: bool = True,
    solver: str = "lanczos",
    chunk: int = 4,
    **solver_args,
) -> torch.Tensor:
    """Second-smallest normalized-cut eigenvector of each image's binary cosine graph.

    feats: (B, N, C) patch features (zero rows = masked-out patches). Returns (B, N) float64 on
    the features' device: x = D^-1/2 y if `generalized` (scipy `eigh(D - A, D)`), else y (the
    unit eigenvector of L); sign fixed by `fix_sign`. `chunk` images are solved together
    (memory about 2 * chunk * N^2 * 8 bytes); `solver_args` go to `fiedler_from_cosine`.
    """
    if feats.ndim != 3:
        raise ValueError(f"feats must be (B, N, C), got {tuple(feats.shape)}")
    parts = [
        fiedler_from_cosine(cosine_matrix(feats[i : i + chunk]), tau, eps, None, generalized, solver, **solver_args)
        for i in range(0, feats.shape[0], chunk)
    ]
    return torch.cat(parts)
