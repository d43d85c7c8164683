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

- "lobpcg" (default): the second-largest eigenpair of M = D^-1/2 A D^-1/2 = I - L with
  `torch.lobpcg` (k = 3), started from the known top eigenvector D^1/2 1 plus seeded random
  columns. A matrix whose residual ||M y - mu y|| stays above `residual_tol` is re-solved densely.
  On a 60x60 grid (N = 3600) this is about 10x faster than the dense solve on CPU.
- "eigh": dense `torch.linalg.eigh` of L (all eigenpairs, batched), CuVLER's solver.

Sign rule (eigenvectors are defined up to sign, and LAPACK's choice differs between CPU, CUDA and
solvers): every returned vector is flipped so that its entry of largest magnitude is positive
(first such entry on ties). MaskCut's partition then always starts from the side of the
strongest patch, which makes its corner rule deterministic.
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["binary_affinity", "fiedler_vectors", "fix_sign"]

TAU = 0.15  # cosine threshold of the binary graph (CutLER README, CuVLER ncut(tau=0.15))
EPS = 1e-5  # weight of the edges below the threshold (CutLER/CuVLER eps=1e-5)


def binary_affinity(feats: torch.Tensor, tau: float = TAU, eps: float = EPS) -> torch.Tensor:
    """Binary cosine graph of patch features.

    feats: (B, N, C) float; rows that are all zero (masked-out patches) have cosine 0 with
    everything. Returns A: (B, N, N) float64 with 1.0 where cos > tau and `eps` elsewhere.
    The cosine is computed in the features' dtype, as the references do.
    """
    if feats.ndim != 3:
        raise ValueError(f"feats must be (B, N, C), got {tuple(feats.shape)}")
    unit = F.normalize(feats, p=2, dim=-1)
    cos = unit @ unit.transpose(1, 2)
    ones = torch.ones((), dtype=torch.float64, device=feats.device)
    return torch.where(cos > tau, ones, torch.full_like(ones, eps))


def fix_sign(vectors: torch.Tensor) -> torch.Tensor:
    """Flip each row of (B, N) so that its largest-magnitude entry (first on ties) is positive."""
    peak = vectors.abs().argmax(dim=-1, keepdim=True)
    sign = torch.sign(torch.gather(vectors, -1, peak))
    return vectors * torch.where(sign == 0, torch.ones_like(sign), sign)


def _dense_second(lap: torch.Tensor) -> torch.Tensor:
    """(B, N, N) symmetric Laplacians -> (B, N) unit eigenvectors of the second-smallest eigenvalue."""
    _, vecs = torch.linalg.eigh(lap)
    return vecs[..., 1]


def _lobpcg_second(
    norm_aff: torch.Tensor, sqrt_deg: torch.Tensor, seed: int, residual_tol: float
) -> Optional[torch.Tensor]:
    """Second-largest eigenvector of one M = D^-1/2 A D^-1/2 (N, N); None if it did not converge."""
    n = norm_aff.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = torch.randn(n, 3, generator=gen, dtype=torch.float64).to(norm_aff.device)
    start[:, 0] = sqrt_deg / sqrt_deg.norm()
    try:
        vals, vecs = torch.lobpcg(norm_aff, k=3, X=start, largest=True, tol=1e-12, niter=300)
    except Exception:  # noqa: BLE001  (ill-conditioned Rayleigh-Ritz: use the dense solver)
        return None
    order = torch.argsort(vals, descending=True)
    mu, vec = vals[order[1]], vecs[:, order[1]]
    vec = vec / vec.norm()
    if (norm_aff @ vec - mu * vec).norm() > residual_tol:
        return None
    return vec


def _fiedler_chunk(feats: torch.Tensor, tau: float, eps: float, generalized: bool, solver: str, seed: int,
                   residual_tol: float) -> torch.Tensor:
    aff = binary_affinity(feats, tau, eps)
    deg = aff.sum(dim=-1)
    inv_sqrt = deg.rsqrt()
    norm_aff = aff * inv_sqrt[:, :, None] * inv_sqrt[:, None, :]
    del aff
    eye = torch.eye(norm_aff.shape[-1], dtype=norm_aff.dtype, device=norm_aff.device)
    if solver == "eigh":
        vecs = _dense_second(eye - norm_aff)
    else:
        rows = []
        for b in range(norm_aff.shape[0]):
            vec = _lobpcg_second(norm_aff[b], deg[b].sqrt(), seed, residual_tol)
            rows.append(vec if vec is not None else _dense_second((eye - norm_aff[b])[None])[0])
        vecs = torch.stack(rows)
    return vecs * inv_sqrt if generalized else vecs


def fiedler_vectors(
    feats: torch.Tensor,
    tau: float = TAU,
    eps: float = EPS,
    generalized: bool = True,
    solver: str = "lobpcg",
    seed: int = 0,
    residual_tol: float = 1e-8,
    chunk: int = 4,
) -> torch.Tensor:
    """Second-smallest normalized-cut eigenvector of each image's binary cosine graph.

    feats: (B, N, C) patch features (zero rows = masked-out patches). Returns (B, N) float64 on
    the features' device: x = D^-1/2 y if `generalized` (scipy `eigh(D - A, D)`), else y (the
    unit eigenvector of L); sign fixed by `fix_sign`. `solver`: "lobpcg" or "eigh" (module doc).
    `chunk` images are solved together (memory: about 3 * chunk * N^2 * 8 bytes).
    """
    if solver not in ("lobpcg", "eigh"):
        raise ValueError(f"solver must be 'lobpcg' or 'eigh', got '{solver}'")
    if feats.ndim != 3:
        raise ValueError(f"feats must be (B, N, C), got {tuple(feats.shape)}")
    parts = [
        _fiedler_chunk(feats[i : i + chunk], tau, eps, generalized, solver, seed, residual_tol)
        for i in range(0, feats.shape[0], chunk)
    ]
    return fix_sign(torch.cat(parts))
