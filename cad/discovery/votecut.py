"""VoteCut (CuVLER, Arica et al. 2024): masks voted from k-means cuts of several ViTs' eigenvectors.

Per image and model m (in `VOTECUT_MODELS` order): the normalized-cut eigenvector y_m (N_m,) of
the model's patch features (`cad.discovery.ncut.fiedler_vectors(generalized=False)`, as CuVLER's
`votecut/ncut.py`). Then, all in `votecut_masks`:

1. `kmeans_labelings`: sklearn KMeans (random_state 0, n_init 10) on the 1-D values, k = 2, 3.
2. `proposals_from_labels`: per label, ascending: skip if it covers >= 2 grid corners; its
   4-connected components (OpenCV, raster order); skip the label if it has > 30 components; drop
   components whose bbox is < 5 patches wide AND < 5 high.
3. all proposals resized to 60x60 (nearest, floor index mapping, as torchvision/F.interpolate).
4. `cluster_by_iou`: greedy IoU > 0.6 clustering (CuVLER `cluster_mask_by_iou`).
5. `vote`: per cluster, in discovery order, until 10 masks or 100 clusters: mean of its
   members > 0.2.
6. `refine_voted_mask`: nearest upsampling to the image, CRF on the bbox crop with margins,
   hole filling, fallback to the upsampled mask when the CRF result is empty or disagrees
   (CuVLER `mask_post_processing`); a CRF that raises also keeps the upsampled mask, as CuVLER,
   but is logged and counted (`crf_failures` in the pipeline summary and the JSON's `info`).
7. Order by cluster size (descending, stable); score = cluster size / largest cluster size.

One deliberate difference: CuVLER orders proposals for the greedy clustering with
`np.argsort(counts)[::-1]`, whose order among equal counts depends on numpy's sort kernel (CPU
SIMD level); cad uses a stable order: partner count descending, then proposal index ascending
(i.e. earlier models in `VOTECUT_MODELS`, then k = 2 before k = 3, then lower labels first).
"""
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from cad.discovery.crf import dense_crf
from cad.discovery.cut_io import fixed_size, mask_annotation, method_models, vit_batch
from cad.discovery.method import DiscoveryImage, Stage2Annotations, register_method
from cad.discovery.ncut import EPS, TAU, fiedler_vectors, ncut_eigenvectors

__all__ = [
    "VOTECUT_MODELS",
    "VotedMask",
    "kmeans_labelings",
    "proposals_from_labels",
    "resize_proposals",
    "pairwise_iou",
    "cluster_by_iou",
    "vote",
    "refine_voted_mask",
    "votecut_masks",
    "votecut_scores",
    "VoteCut",
]

logger = logging.getLogger(__name__)

CRF_FAILURES = "crf_failures"  # Stage2Annotations.failures kind: masks kept unrefined after a CRF error

# CuVLER extract_eig_vecs.py default model list, in this order (the order breaks ties).
VOTECUT_MODELS = ("dino_vits16", "dinov2_vitb14", "dinov2_vits14", "dino_vitb16", "dino_vits8", "dino_vitb8")
KS = (2, 3)  # k-means cluster counts (CuVLER votecut Ks=(2, 3))
# eigenvectors per model (CuVLER create_pseudo_masks.py --num-eig-vecs, default 1: the Fiedler vector);
# with n > 1 each of the 2nd..(n+1)-th eigenvectors of L is clustered with every k, model by model.
NUM_EIG_VECS = 1
CORNER_LIMIT = 2  # a label covering >= 2 grid corners is background (num_corners_on_border_mask)
MAX_COMPONENTS = 30  # a label with > 30 components is noise (instances_from_semantic_labels)
MIN_BOX = 5  # components whose bbox is < 5 wide AND < 5 high are dropped (min_mask_w/h=5)
VOTE_GRID = (60, 60)  # common grid of all proposals (iou_clustering patches_shape)
IOU_THRESHOLD = 0.6  # same-cluster IoU (cluster_mask_by_iou threshold=0.6)
PIVOT_ROUNDS = 5  # pivot refinement rounds (cluster_mask_by_iou pivot_iter=5)
VOTE_THRESHOLD = 0.2  # pixel kept when > 20% of the cluster votes for it (tau_m=0.2)
MAX_MASKS = 10  # masks per image (max_masks_per_img=10)
MAX_CLUSTERS = 100  # clusters examined per image (iou_clustering i >= 100)
CRF_BOX_IOU = 0.5  # CRF result kept when its bbox IoU with the input is >= 0.5 (mask_post_processing)
RESOLUTION = 480  # input side, rounded down to the patch multiple: 480 DINO, 476 DINOv2 (extract_eig_vecs)


@dataclass
class VotedMask:
    """One VoteCut output: `mask` (H, W) bool at the original size, `grid_mask` the voted 60x60
    mask, `cluster_size` its number of proposals, `crf_success` False when the CRF was skipped,
    rejected or raised, `crf_error` the CRF's exception ("Type: message") when it raised."""

    mask: np.ndarray
    grid_mask: np.ndarray
    cluster_size: int
    crf_success: bool
    crf_error: Optional[str] = None


def kmeans_labelings(vectors: Sequence[np.ndarray], ks: Sequence[int] = KS, seed: int = 0) -> List[np.ndarray]:
    """k-means labels of each 1-D eigenvector on its grid.

    vectors: per model an (h, w) array. Returns, for each model then each k, an (h, w) int array
    (sklearn `KMeans(n_clusters=k, random_state=seed, n_init=10)` on the values).
    """
    out = []
    # one thread: OpenMP threads buy nothing on <= 3600 1-D points and slow these fits down by
    # orders of magnitude on a busy CPU (docs/benchmarks.md, "Notes behind choices in the code")
    with threadpool_limits(limits=1):
        for vec in vectors:
            samples = np.asarray(vec, dtype=np.float64).reshape(-1, 1)
            for k in ks:
                labels = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(samples).labels_
                out.append(labels.reshape(vec.shape))
    return out


def proposals_from_labels(
    labels: np.ndarray,
    corner_limit: int = CORNER_LIMIT,
    max_components: int = MAX_COMPONENTS,
    min_box: int = MIN_BOX,
) -> List[np.ndarray]:
    """Instance proposals (h, w) bool of one labeling (h, w) int, labels in ascending order."""
    out = []
    for label in np.unique(labels):
        region = (labels == label).astype(np.uint8)
        if int(region[0, 0]) + int(region[0, -1]) + int(region[-1, 0]) + int(region[-1, -1]) >= corner_limit:
            continue
        count, comp, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=4)
        # component 0 is the background; components are numbered in raster order of first pixel
        if count - 1 > max_components:
            continue
        for c in range(1, count):
            if stats[c, cv2.CC_STAT_WIDTH] < min_box and stats[c, cv2.CC_STAT_HEIGHT] < min_box:
                continue
            out.append(comp == c)
    return out


def resize_proposals(proposals: Sequence[np.ndarray], size: Tuple[int, int] = VOTE_GRID) -> np.ndarray:
    """Proposals of any grids -> (P, *size) bool with F.interpolate's nearest (floor) mapping."""
    out = np.zeros((len(proposals), *size), dtype=bool)
    for i, prop in enumerate(proposals):
        up = F.interpolate(torch.from_numpy(prop)[None, None].float(), size=size, mode="nearest")
        out[i] = up[0, 0].numpy() > 0.5
    return out


def pairwise_iou(masks: np.ndarray) -> np.ndarray:
    """(P, h, w) bool -> (P, P) float64 IoU (0 where both masks are empty)."""
    flat = masks.reshape(len(masks), -1).astype(np.float64)
    inter = flat @ flat.T
    area = flat.sum(axis=1)
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def cluster_by_iou(ious: np.ndarray, threshold: float = IOU_THRESHOLD, rounds: int = PIVOT_ROUNDS) -> List[np.ndarray]:
    """Greedy IoU clustering of P proposals from their (P, P) IoU matrix.

    Candidates are visited by their number of partners with IoU > `threshold` (self included),
    descending, ties by index ascending (stable; CuVLER's order is not). For each unused pivot:
    up to `rounds` times, add every proposal with IoU > threshold to the pivot and move the pivot
    to the member with the largest IoU sum within the cluster (first on ties), stopping when
    nothing was added. If the final pivot is already used the cluster is discarded, otherwise its
    not-yet-used members form it; either way all its members become used.
    Returns the clusters (sorted member indices) in discovery order.
    """
    close = ious > threshold
    counts = close.sum(axis=1)
    order = np.argsort(-counts, kind="stable")
    used = np.zeros(len(ious), dtype=bool)
    clusters = []
    for start in order:
        if used[start]:
            continue
        pivot = start
        members = np.array([start])
        for _ in range(rounds):
            grown = np.union1d(members, np.flatnonzero(close[pivot]))
            if len(grown) == len(members):
                break
            members = grown
            pivot = members[np.argmax(ious[np.ix_(members, members)].sum(axis=1))]
        if not used[pivot]:
            clusters.append(members[~used[members]])
        used[members] = True
    return clusters


def vote(masks: np.ndarray, members: np.ndarray, threshold: float = VOTE_THRESHOLD) -> np.ndarray:
    """Pixels where more than `threshold` of the cluster's masks (P, h, w) agree; (h, w) bool."""
    return masks[members].mean(axis=0, dtype=np.float64) > threshold


def _bbox(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """[x, y, w, h] of a non-empty (H, W) bool mask (inclusive pixel extents)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _box_iou(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def refine_voted_mask(
    grid_mask: np.ndarray, image: np.ndarray, crf: bool = True, box_iou: float = CRF_BOX_IOU
) -> Tuple[np.ndarray, bool, Optional[str]]:
    """One voted grid mask (h, w) bool -> ((H, W) bool mask on `image` (H, W, 3), crf_success, crf_error).

    Nearest upsampling to (H, W); with `crf`: dense CRF on the mask's bbox crop enlarged by
    bbox_w // 3 and bbox_h // 3 on each side, holes filled at >= 0.5; when that result is empty,
    its bbox IoU with the upsampled mask is < `box_iou`, or the CRF raises, the upsampled mask is
    returned with crf_success False; crf_error is the exception ("Type: message") when the CRF
    raised (else None). Without CRF: the hole-filled upsampled mask, False, None.
    """
    height, width = image.shape[:2]
    up = F.interpolate(torch.from_numpy(grid_mask)[None, None].float(), size=(height, width), mode="nearest")
    up = up[0, 0].numpy() > 0.5
    if not crf:
        return ndimage.binary_fill_holes(up), False, None
    x, y, w, h = _bbox(up)
    x0, x1 = max(x - w // 3, 0), min(x + w + w // 3, width)
    y0, y1 = max(y - h // 3, 0), min(y + h + h // 3, height)
    try:
        crop = dense_crf(image[y0:y1, x0:x1], up[y0:y1, x0:x1])
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001  (CuVLER keeps the upsampled mask; cad reports it, see votecut_masks)
        return up, False, f"{type(e).__name__}: {e}"
    refined = np.zeros_like(up)
    refined[y0:y1, x0:x1] = ndimage.binary_fill_holes(crop >= 0.5)
    if not refined.any() or _box_iou(_bbox(up), _bbox(refined)) < box_iou:
        return up, False, None
    return refined, True, None


def votecut_masks(
    vectors: Sequence[np.ndarray],
    image: np.ndarray,
    crf: bool = True,
    ks: Sequence[int] = KS,
    corner_limit: int = CORNER_LIMIT,
    max_components: int = MAX_COMPONENTS,
    min_box: int = MIN_BOX,
    vote_grid: Tuple[int, int] = VOTE_GRID,
    iou_threshold: float = IOU_THRESHOLD,
    pivot_rounds: int = PIVOT_ROUNDS,
    vote_threshold: float = VOTE_THRESHOLD,
    max_masks: int = MAX_MASKS,
    max_clusters: int = MAX_CLUSTERS,
    crf_box_iou: float = CRF_BOX_IOU,
) -> List[VotedMask]:
    """VoteCut masks of one image from its per-model eigenvectors (each (h_m, w_m)), image RGB uint8.

    Returns at most `max_masks` `VotedMask`s sorted by cluster size, descending (stable); an
    empty list when no proposal survives the filters (CuVLER skips such images).
    """
    labelings = kmeans_labelings(vectors, ks)
    proposals = [p for lab in labelings for p in proposals_from_labels(lab, corner_limit, max_components, min_box)]
    if not proposals:
        return []
    masks = resize_proposals(proposals, vote_grid)
    clusters = cluster_by_iou(pairwise_iou(masks), iou_threshold, pivot_rounds)
    out = []
    for members in clusters[:max_clusters]:
        if len(out) >= max_masks:
            break
        grid_mask = vote(masks, members, vote_threshold)
        if not grid_mask.any():
            continue
        mask, ok, error = refine_voted_mask(grid_mask, image, crf, crf_box_iou)
        if error is not None:
            logger.warning("VoteCut: the CRF failed on a mask (%s); keeping the unrefined mask", error)
        out.append(VotedMask(mask, grid_mask, len(members), ok, error))
    return sorted(out, key=lambda m: m.cluster_size, reverse=True)


def _as_stack(vectors: np.ndarray) -> List[np.ndarray]:
    """(h, w) or (n, h, w) eigenvector(s) of one model -> list of (h, w)."""
    return [vectors] if vectors.ndim == 2 else list(vectors)


def votecut_scores(masks: Sequence[VotedMask]) -> List[float]:
    """Score of each mask: cluster size / largest cluster size of the image (CuVLER annotations)."""
    largest = max((m.cluster_size for m in masks), default=1)
    return [m.cluster_size / largest for m in masks]


@register_method("votecut")
class VoteCut:
    """VoteCut behind the discovery pipeline (`tools/discover.py votecut`).

    Stage 1: per model (in order), images resized to `resolution` rounded down to the patch
    multiple (LANCZOS), one batched forward, features = last-block keys for DINO and final-norm
    patch tokens for DINOv2 (CuVLER), then the L eigenvector (`fiedler_vectors(generalized=False)`);
    stored per image: `eigvec_<i>` (h_i, w_i) float64 per model, about 100 KB for the 6 models.
    Stage 2: `votecut_masks` and COCO annotations scored by `votecut_scores`, returned as
    `Stage2Annotations` whose `failures["crf_failures"]` counts the masks kept unrefined because
    the CRF raised.

    options: `models` ((arch, weights) pairs, default `VOTECUT_MODELS` from the torch.hub cache),
    `device`, `crf` (`cad.discovery.method.MethodOptions`). `vit_overrides` change every
    architecture (small random checkpoints in tests).
    """

    def __init__(
        self,
        options=None,
        resolution: int = RESOLUTION,
        tau: float = TAU,
        eps: float = EPS,
        ks: Sequence[int] = KS,
        iou_threshold: float = IOU_THRESHOLD,
        vote_threshold: float = VOTE_THRESHOLD,
        max_masks: int = MAX_MASKS,
        solver: str = "lanczos",
        amp: Optional[str] = None,
        num_eig_vecs: int = NUM_EIG_VECS,
        **vit_overrides,
    ) -> None:
        if num_eig_vecs < 1:
            raise ValueError(f"VoteCut needs num_eig_vecs >= 1 (got {num_eig_vecs})")
        self.num_eig_vecs = num_eig_vecs
        self.models = method_models(options, VOTECUT_MODELS)
        self.device = getattr(options, "device", "cpu")
        self.crf = bool(getattr(options, "crf", True))
        self.resolution, self.tau, self.eps, self.ks = resolution, tau, eps, tuple(ks)
        self.iou_threshold, self.vote_threshold, self.max_masks = iou_threshold, vote_threshold, max_masks
        self.solver, self.amp, self.vit_overrides = solver, amp, vit_overrides
        self._vits: List[torch.nn.Module] = []

    @property
    def vits(self) -> List[torch.nn.Module]:
        """The ViTs in model order, built on first use (stage-2 workers never build them)."""
        if not self._vits:
            from cad.backbones.vit import build_vit

            self._vits = [build_vit(a, w, device=self.device, **self.vit_overrides) for a, w in self.models]
        return self._vits

    def eigenvectors(self, images: List[np.ndarray]) -> List[List[np.ndarray]]:
        """Per image, per model: the (h, w) float64 eigenvector of the model's patch graph, or with
        `num_eig_vecs` > 1 the (num_eig_vecs, h, w) eigenvectors 2..num_eig_vecs+1 (dense eigh)."""
        from cad.backbones.features import extract_features

        out: List[List[np.ndarray]] = [[] for _ in images]
        for (arch, _), vit in zip(self.models, self.vits):
            side = fixed_size(self.resolution, int(vit.patch_embed.patch_size[0]))
            feats = extract_features(vit, vit_batch(images, side).to(self.device), amp=self.amp)
            patch_feats = feats.tokens if arch.startswith("dinov2") else feats.keys
            if self.num_eig_vecs == 1:
                vecs = fiedler_vectors(patch_feats, self.tau, self.eps, generalized=False, solver=self.solver)
                shape = feats.grid
            else:
                vecs = ncut_eigenvectors(patch_feats, self.num_eig_vecs, self.tau, self.eps)
                shape = (self.num_eig_vecs, *feats.grid)
            for i, vec in enumerate(vecs.cpu().numpy()):
                out[i].append(vec.reshape(shape))
        return out

    def stage1(self, images: List[DiscoveryImage]) -> List[Dict[str, np.ndarray]]:
        per_image = self.eigenvectors([item.image for item in images])
        return [{f"eigvec_{m}": vec for m, vec in enumerate(vecs)} for vecs in per_image]

    def stage2(self, image: DiscoveryImage, arrays: Dict[str, np.ndarray]) -> Stage2Annotations:
        # CuVLER's order: per model, per eigenvector (then per k in kmeans_labelings)
        vectors = [v for m in range(len(self.models)) for v in _as_stack(arrays[f"eigvec_{m}"])]
        masks = votecut_masks(
            vectors,
            image.image,
            self.crf,
            self.ks,
            iou_threshold=self.iou_threshold,
            vote_threshold=self.vote_threshold,
            max_masks=self.max_masks,
        )
        anns = [mask_annotation(m.mask, s) for m, s in zip(masks, votecut_scores(masks))]
        return Stage2Annotations(anns, {CRF_FAILURES: sum(m.crf_error is not None for m in masks)})
