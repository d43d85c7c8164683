"""MaskCut (CutLER, Wang et al. 2023): up to N normalized cuts per image, each masking out the last.

Stage 1 (`maskcut_patch_masks`, batched over images): per cut, the Fiedler vector of the binary
cosine graph of the (masked) patch keys, its bipartition and the 4-connected component holding
the seed, on the patch grid. Stage 2 (`maskcut_refine`, per image): grid masks to pixels, dense
CRF, hole filling, the CRF-agreement test and the resize to the original image size.
Every rule follows CutLER's `maskcut/maskcut.py` (`maskcut_forward` for the cuts, `maskcut` for
the post-processing) and `maskcut/crf.py`; the constants below name the official variables.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from cad.discovery.crf import dense_crf
from cad.discovery.cut_io import fixed_size, mask_annotation, method_models, vit_batch
from cad.discovery.method import DiscoveryImage, LazyViT, register_method
from cad.discovery.ncut import EPS, TAU, cosine_matrix, fiedler_from_cosine

__all__ = ["bipartition", "maskcut_patch_masks", "maskcut_refine", "mask_iou", "count_corners", "MaskCut"]

N_CUTS = 3  # masks per image (CutLER maskcut.py --N 3)
CORNER_LIMIT = 3  # a partition covering >= 3 of the 4 grid corners is background (check_num_fg_corners)
OVERLAP_IOU = 0.5  # a later cut with IoU > 0.5 with the previous cut is emptied (maskcut_forward)
MIN_AREA = 0.01  # a later cut covering <= 1% of the grid is emptied (maskcut_forward)
CRF_IOU = 0.5  # a mask whose CRF output has IoU < 0.5 with it is dropped (maskcut.py main loop)
QUANTUM = 9  # decimals kept of the max-normalised eigenvector before the bipartition (cad, see bipartition)
RESOLUTION = 480  # images are resized to 480x480 (CutLER --fixed_size 480)
DEFAULT_ARCH = "dino_vitb8"  # CutLER's MaskCut runs DINO ViT-B/8 keys


def count_corners(mask: np.ndarray) -> int:
    """Number of the 4 corner cells of a (h, w) boolean grid that are set."""
    return int(mask[0, 0]) + int(mask[0, -1]) + int(mask[-1, 0]) + int(mask[-1, -1])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean arrays; 0.0 when both are empty (CutLER's NaN compares as False)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def bipartition(vector: np.ndarray, grid: Tuple[int, int], corner_limit: int = CORNER_LIMIT) -> np.ndarray:
    """MaskCut's object mask from one Fiedler vector (N,) on a grid (h, w); returns (h, w) bool.

    Partition = vector > mean; seed = argmax |vector|. The partition is reversed (and the vector
    negated) when it covers >= `corner_limit` corners, otherwise when the seed is not in it; the
    seed then becomes the argmax of the (possibly negated) vector and the mask is the 4-connected
    component of the partition holding it (empty if the seed falls outside, a degenerate vector).
    The vector is first scaled to max |v| = 1 and rounded to 1e-9 (`QUANTUM`): entries equal in
    exact arithmetic (e.g. all masked-out patches) then stay equal, so the solver's round-off
    cannot choose the seed among them (argmax takes the first).
    """
    peak = np.abs(vector).max()
    vector = np.round(vector / peak, QUANTUM) if peak > 0 else vector
    part = vector > vector.mean()
    seed = int(np.argmax(np.abs(vector)))
    if count_corners(part.reshape(grid)) >= corner_limit or not part[seed]:
        vector, part = -vector, ~part
    seed = int(np.argmax(vector))
    if not part[seed]:
        return np.zeros(grid, dtype=bool)
    labels, _ = ndimage.label(part.reshape(grid))  # default structure: 4-connectivity
    return labels == labels.flat[seed]


def maskcut_patch_masks(
    feats: torch.Tensor,
    grid: Tuple[int, int],
    n_cuts: int = N_CUTS,
    tau: float = TAU,
    eps: float = EPS,
    overlap_iou: float = OVERLAP_IOU,
    min_area: float = MIN_AREA,
    corner_limit: int = CORNER_LIMIT,
    solver: str = "lanczos",
    chunk: int = 4,
) -> np.ndarray:
    """MaskCut's cuts on the patch grid for a batch of images.

    feats: (B, h*w, C) patch keys. Returns (B, n_cuts, h, w) bool; an emptied cut is all False.
    From the second cut on, a cut whose IoU with the previous cut is > `overlap_iou` or whose area
    is <= `min_area` of the grid is emptied; after each cut every kept patch so far is masked out
    (CutLER zeroes its features: cosine 0 with everything) before the next eigenvector. The
    cosines are computed once per image; `chunk` images share each eigensolve.
    """
    batch = feats.shape[0]
    h, w = grid
    if feats.shape[1] != h * w:
        raise ValueError(f"feats has {feats.shape[1]} patches, grid {grid} has {h * w}")
    masks = np.zeros((batch, n_cuts, h, w), dtype=bool)
    for lo in range(0, batch, chunk):
        cos = cosine_matrix(feats[lo : lo + chunk])
        painted = np.zeros((cos.shape[0], h * w), dtype=bool)
        for cut in range(n_cuts):
            active = torch.from_numpy(~painted).to(feats.device)
            vectors = fiedler_from_cosine(cos, tau, eps, active, generalized=True, solver=solver).cpu().numpy()
            for b, vec in enumerate(vectors):
                mask = bipartition(vec, grid, corner_limit)
                if cut >= 1 and (mask_iou(masks[lo + b, cut - 1], mask) > overlap_iou or mask.mean() <= min_area):
                    mask = np.zeros_like(mask)
                masks[lo + b, cut] = mask
                painted[b] |= mask.reshape(-1)
    return masks


def _upsample_nearest(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(h, w) bool -> (H, W) bool with F.interpolate's nearest rule (floor index mapping)."""
    up = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="nearest")
    return up[0, 0].numpy() > 0.5


def maskcut_refine(
    patch_masks: np.ndarray,
    image: np.ndarray,
    crf: bool = True,
    crf_iou: float = CRF_IOU,
    resolution: Optional[Tuple[int, int]] = None,
) -> List[np.ndarray]:
    """Pixel masks of one image from its MaskCut grid masks.

    patch_masks: (n_cuts, h, w) bool from `maskcut_patch_masks`. image: original RGB uint8
    (H, W, 3). Each cut, minus the earlier ones, is upsampled (nearest) to `resolution`
    (default 480x480), refined by the dense CRF on the image resized there (LANCZOS), hole-filled
    at >= 0.5 and dropped when IoU(raw, refined) < `crf_iou`; survivors are resized to (H, W)
    (PIL bicubic, Pillow's default filter) and binarised at max/2. `crf=False` skips only the CRF.
    Returns the non-empty (H, W) bool masks in cut order.
    """
    res = resolution or (RESOLUTION, RESOLUTION)
    height, width = image.shape[:2]
    small = np.asarray(Image.fromarray(image).resize((res[1], res[0]), Image.LANCZOS)) if crf else None
    taken = np.zeros(patch_masks.shape[1:], dtype=bool)
    out = []
    for grid_mask in patch_masks:
        own = grid_mask & ~taken
        taken |= own
        if not own.any():
            continue
        raw = _upsample_nearest(own, res)
        refined = dense_crf(small, raw) if crf else raw.astype(np.float32)
        refined = ndimage.binary_fill_holes(refined >= 0.5)
        if mask_iou(raw, refined) < crf_iou:
            continue
        big = np.asarray(Image.fromarray(refined.astype(np.uint8) * 255).resize((width, height), Image.BICUBIC))
        final = big > big.max() / 2.0
        if final.any():
            out.append(final)
    return out


@register_method("maskcut")
class MaskCut(LazyViT):
    """MaskCut behind the discovery pipeline (`tools/discover.py maskcut`).

    Stage 1: images resized to `resolution` (LANCZOS, default 480x480), one batched ViT forward
    (keys of the last block), then `maskcut_patch_masks`; stored per image: `cuts` (n_cuts, h, w)
    uint8, a few KB. Stage 2: `maskcut_refine` and COCO annotations (score 1.0: MaskCut has none).

    options: `models` ((arch, weights) pairs; the first is used, default dino_vitb8 from the
    torch.hub cache), `device`, `crf` (`cad.discovery.method.MethodOptions`). `vit_overrides`
    change the architecture (small random checkpoints in tests).
    """

    default_arch = DEFAULT_ARCH

    def __init__(
        self,
        options=None,
        resolution: int = RESOLUTION,
        n_cuts: int = N_CUTS,
        tau: float = TAU,
        eps: float = EPS,
        overlap_iou: float = OVERLAP_IOU,
        min_area: float = MIN_AREA,
        crf_iou: float = CRF_IOU,
        solver: str = "lanczos",
        amp: Optional[str] = None,
        **vit_overrides,
    ) -> None:
        models = method_models(options, [self.default_arch])
        if len(models) != 1:
            raise ValueError(f"MaskCut uses one ViT, got {len(models)} models")
        self.arch, self.weights = models[0]
        self.device = getattr(options, "device", "cpu")
        self.crf = bool(getattr(options, "crf", True))
        self.resolution, self.n_cuts, self.tau, self.eps = resolution, n_cuts, tau, eps
        self.overlap_iou, self.min_area, self.crf_iou = overlap_iou, min_area, crf_iou
        self.solver, self.amp, self.vit_overrides = solver, amp, vit_overrides
        self._model: Optional[torch.nn.Module] = None

    def features(self, images: List[np.ndarray]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Last-block keys (B, h*w, C) of the resized images, and the grid (h, w)."""
        from cad.backbones.features import extract_features

        side = fixed_size(self.resolution, int(self.model.patch_embed.patch_size[0]))
        feats = extract_features(self.model, vit_batch(images, side).to(self.device), amp=self.amp)
        return feats.keys, feats.grid

    def stage1(self, images: List[DiscoveryImage]) -> List[Dict[str, np.ndarray]]:
        keys, grid = self.features([item.image for item in images])
        cuts = maskcut_patch_masks(
            keys, grid, self.n_cuts, self.tau, self.eps, self.overlap_iou, self.min_area, solver=self.solver
        )
        return [{"cuts": c.astype(np.uint8)} for c in cuts]

    def stage2(self, image: DiscoveryImage, arrays: Dict[str, np.ndarray]) -> List[Dict]:
        side = (self.resolution, self.resolution)
        masks = maskcut_refine(arrays["cuts"].astype(bool), image.image, self.crf, self.crf_iou, side)
        return [mask_annotation(m, 1.0) for m in masks]
