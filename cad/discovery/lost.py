"""LOST (Siméoni et al., BMVC 2021): single-object discovery from the keys of a self-supervised ViT.

Rules (paper Sec. 3 and the reference code, valeoai/LOST `object_discovery.py`):

- features F: keys of the last attention layer, all heads concatenated, CLS dropped, not
  normalised; patch similarity A = F Fᵀ;
- degree d_p = #{q ≠ p : A_pq > 0} (the reference zeroes the diagonal, then counts entries > 0
  per row; the self term A_pp = |f_p|² > 0 would only add 1 to every degree);
- seed s* = argmin d (ties: lowest patch index; the reference's unstable argsort leaves ties
  unspecified);
- expansion set S = {q among the k = 100 lowest-degree patches : A_s*q > 0} (the seed is in it);
- mask m_q = [Σ_{s∈S} A_sq > 0]; object = its 4-connected component holding the seed;
- box [x0, y0, x1, y1] = [p·col_min, p·row_min, min(p·(col_max+1), W), min(p·(row_max+1), H)]:
  only the max side is clipped to the (unpadded) image, as in the reference.

The full N×N similarity is never stored: degrees come from row chunks of F Fᵀ and the mask from
F (Σ_{s∈S} f_s), so memory is O(chunk·N) and time ≈ one N×N×C product.

Multi-object variant (beyond the paper): after each object, its component is removed and LOST
runs again on the remaining patches (degrees counted among them, seed and expansion among them,
component within them). Each object scores 1 − d_s*/(n − 1), n = remaining patches: the fraction
of them the seed is *not* positively correlated with. Stopping: `max_objects` objects, no patch
left, or a seed whose score is ≤ `min_score` (0.5: the seed is positively correlated with at
least half of what is left, i.e. no longer a minority — LOST's "objects cover less than the
background" assumption fails). The first object is always returned and is exactly single-object
LOST; scores are made non-increasing (running minimum) so the ranking is the discovery order.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.ndimage
import torch

from cad.config import ConfigError
from cad.discovery.method import DiscoveryImage, LazyViT, register_method

__all__ = [
    "K_PATCHES",
    "LostObject",
    "lost_degree",
    "lost_expansion",
    "lost_mask",
    "seed_component_box",
    "lost",
    "lost_multi",
    "dino_seg",
    "LOST",
]

# LOST's k: size of the pool of lowest-degree patches the seed is expanded with (paper Sec. 3.2).
K_PATCHES = 100
# Rows of F Fᵀ computed at once (bounds memory to about this many floats).
_CHUNK_ELEMENTS = 1 << 24
# Pixels per grid cell: the patch size, or (rows, cols) scales of a CNN map.
Scale = Union[int, float, Tuple[float, float]]


@dataclass
class LostObject:
    """One discovered object on a patch grid (h, w).

    seed: flat patch index; expansion: (|S|,) flat indices of the expansion set; mask: (h, w) bool
    `Σ_S A > 0` (within the active patches); component: (h, w) bool, the 4-connected component of
    the mask holding the seed; box: (4,) float [x0, y0, x1, y1] in image pixels; score in (0, 1].
    """

    seed: int
    expansion: np.ndarray
    mask: np.ndarray
    component: np.ndarray
    box: np.ndarray
    score: float


def lost_degree(keys: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Degrees d_p = #{q ≠ p, q active : k_p·k_q > 0} of the patches; keys (N, C) -> (N,) int64.

    `active` (N,) bool restricts the counted neighbours q (all patches when None).
    """
    n = keys.shape[0]
    cols = keys if active is None else keys[active]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, cols.shape[0]))
    degree = torch.cat([((keys[i : i + chunk] @ cols.T) > 0).sum(1) for i in range(0, n, chunk)])
    self_term = (keys * keys).sum(1) > 0
    if active is not None:
        self_term &= active
    return degree - self_term.long()


def _ranked(degree: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Active patch indices by increasing degree, ties by index (stable sort)."""
    idx = torch.nonzero(active).squeeze(1)
    order = torch.sort(degree[idx], stable=True).indices
    return idx[order]


def lost_expansion(keys: torch.Tensor, ranked: torch.Tensor, k: int = K_PATCHES) -> Tuple[int, torch.Tensor]:
    """Seed and expansion set: seed = ranked[0]; S = {q in ranked[:k] : k_seed·k_q > 0}.

    keys (N, C); ranked: patch indices by increasing degree. Returns (seed, S as (|S|,) int64).
    """
    seed = int(ranked[0])
    pool = ranked[:k]
    positive = (keys[pool] @ keys[seed]) > 0
    return seed, pool[positive]


def lost_mask(keys: torch.Tensor, expansion: torch.Tensor) -> torch.Tensor:
    """m_q = [Σ_{s∈S} k_s·k_q > 0] for all patches q; keys (N, C) -> (N,) bool."""
    return (keys @ keys[expansion].sum(0)) > 0


def seed_component_box(
    mask: np.ndarray, seed: int, patch_size: Scale, image_size: Tuple[int, int]
) -> Tuple[np.ndarray, np.ndarray]:
    """4-connected component of `mask` (h, w) holding `seed` and its box in pixels.

    The seed always belongs to its component (the reference raises when it is outside the mask,
    which needs an all-zero key). `patch_size`: pixels per grid cell, one number or (rows, cols)
    (a CNN's map: padded size / map size, the reference's `scales`). image_size = (H, W) of the
    unpadded image; only x1/y1 are clipped. Returns (component (h, w) bool, box (4,) float64
    [x0, y0, x1, y1]).
    """
    h, w = mask.shape
    row, col = divmod(int(seed), w)
    grid = mask.copy()
    grid[row, col] = True
    labels, _ = scipy.ndimage.label(grid)  # default structure = 4-connectivity
    component = labels == labels[row, col]
    rows = np.flatnonzero(component.any(1))
    cols = np.flatnonzero(component.any(0))
    height, width = image_size
    sy, sx = _scales(patch_size)
    box = np.array(
        [sx * cols[0], sy * rows[0], min(sx * (cols[-1] + 1), width), min(sy * (rows[-1] + 1), height)],
        dtype=np.float64,
    )
    return component, box


def _scales(patch_size: Scale) -> Tuple[float, float]:
    return tuple(patch_size) if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)


def lost_multi(
    keys: torch.Tensor,
    grid: Tuple[int, int],
    patch_size: Scale,
    image_size: Tuple[int, int],
    k: int = K_PATCHES,
    max_objects: int = 1,
    min_score: float = 0.5,
) -> List[LostObject]:
    """LOST on one image's keys (N = h*w, C), then repeated on what is left (see module doc).

    Returns up to `max_objects` objects in rank order; the first is single-object LOST.
    """
    h, w = grid
    if keys.ndim != 2 or keys.shape[0] != h * w:
        raise ValueError(f"keys must be (h*w, C) = ({h * w}, C), got {tuple(keys.shape)}")
    keys = keys.float()
    active = torch.ones(h * w, dtype=torch.bool, device=keys.device)
    degree = lost_degree(keys)
    objects: List[LostObject] = []
    last_score = 1.0
    while len(objects) < max_objects and bool(active.any()):
        ranked = _ranked(degree, active)
        remaining = int(active.sum())
        seed, expansion = lost_expansion(keys, ranked, k)
        score = 1.0 - float(degree[seed]) / max(remaining - 1, 1)
        if objects and score <= min_score:
            break
        mask = (lost_mask(keys, expansion) & active).view(h, w).cpu().numpy()
        component, box = seed_component_box(mask, seed, patch_size, image_size)
        last_score = min(last_score, score)
        objects.append(LostObject(seed, expansion.cpu().numpy(), mask, component, box, last_score))
        removed = torch.from_numpy(component.reshape(-1)).to(keys.device)
        active &= ~removed
        if len(objects) < max_objects and bool(active.any()):
            # Neighbours just removed no longer count: d_p -= #{q removed : k_p·k_q > 0}.
            degree = degree - ((keys @ keys[removed].T) > 0).sum(1)
    return objects


def lost(
    keys: torch.Tensor, grid: Tuple[int, int], patch_size: Scale, image_size: Tuple[int, int], k: int = K_PATCHES
) -> LostObject:
    """Single-object LOST on keys (h*w, C) of an image of `image_size` (H, W) (see module doc)."""
    return lost_multi(keys, grid, patch_size, image_size, k=k, max_objects=1)[0]


# main_lost.py --dinoseg_head default; dino_seg keeps this fraction of the CLS attention mass
# (DINO's visualize_attention.py threshold, `official_th` in object_discovery.py).
DINOSEG_HEAD = 4
DINOSEG_MASS = 0.6
# main_lost.py --which_features: the last block's keys (default), queries or values.
FEATURES = ("k", "q", "v")


def dino_seg(cls_attn: torch.Tensor, grid: Tuple[int, int], patch_size: int, head: int = DINOSEG_HEAD) -> np.ndarray:
    """The DINO-seg baseline of LOST's paper (object_discovery.py `dino_seg`): box (4,) float64 of
    one head's CLS attention (cls_attn (heads, N) over the patches, softmax over all tokens).

    Per head the patches holding the top 60 % of the attention mass are kept; on the map of head
    `head`, the 4-connected components are labelled and the box is that of the largest one, in
    pixels (patch_size * [col_min, row_min, col_max + 1, row_max + 1], not clipped to the image).
    The reference's component choice is kept as it is (it produced the paper's DINO-seg row):
    sizes are taken for labels 0 .. max-1, so the last component is never a candidate and, with a
    single component, label 0 (the background) is chosen.
    """
    h, w = grid
    val, idx = torch.sort(cls_attn.float(), dim=1)
    val = val / val.sum(dim=1, keepdim=True)
    keep_sorted = torch.cumsum(val, dim=1) > (1 - DINOSEG_MASS)
    keep = torch.zeros_like(keep_sorted).scatter_(1, idx, keep_sorted)  # back to patch order
    labels, _ = scipy.ndimage.label(keep[head].reshape(h, w).cpu().numpy())
    sizes = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)[: int(labels.max())]
    chosen = int(np.argmax(sizes[1:])) + 1 if len(sizes) > 1 else 0
    rows = np.flatnonzero((labels == chosen).any(1))
    cols = np.flatnonzero((labels == chosen).any(0))
    return patch_size * np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


@register_method("lost")
class LOST(LazyViT):
    """LOST behind the discovery pipeline (`tools/discover.py lost`).

    Stage 1 runs the backbone at full resolution (ImageNet-normalised, zero-padded bottom/right to
    a multiple of the patch size, 16 for the CNNs; images of equal padded size share a forward
    pass) and LOST itself, and stores per image only `boxes` (n, 4) float32 [x0, y0, x1, y1]
    pixels, `scores` (n,), `seeds` (n,) flat grid indices (-1 for DINO-seg) and `grid` (2,) — the
    features would be far larger than the result. Stage 2 turns them into COCO annotations.

    Backbones (main_lost.py --arch): a DINO ViT (`cad.backbones.vit`, position embedding resized
    with DINO's own rule, `DINO_INTERPOLATE_OFFSET`, as LOST's DINO) with `features` "k" (keys,
    default), "q" or "v" of the last block; or a CNN (`cad.backbones.cnn`: dino_resnet50, resnet50,
    vgg16, with `resnet_dilate`). `dinoseg` replaces LOST by the DINO-seg baseline (ViTs only).

    options: an object with `models` ((arch, weights) pairs; the first is used, default
    dino_vits16 from the torch.hub cache) and `device` (`cad.discovery.method.MethodOptions`).
    """

    default_arch = "dino_vits16"

    def __init__(
        self,
        options=None,
        k_patches: int = K_PATCHES,
        max_objects: int = 1,
        min_score: float = 0.5,
        amp: Optional[str] = None,
        features: str = "k",
        dinoseg: bool = False,
        dinoseg_head: int = DINOSEG_HEAD,
        resnet_dilate: int = 2,
        **vit_overrides,
    ) -> None:
        from cad.backbones.cnn import CNN_ARCHS

        models: Sequence[Tuple[str, Optional[str]]] = tuple(getattr(options, "models", ()) or ())
        if len(models) > 1:
            raise ValueError(f"LOST uses one ViT, got {len(models)} models")
        self.arch, self.weights = models[0] if models else (self.default_arch, None)
        self.device = getattr(options, "device", "cpu")
        if features not in FEATURES:
            raise ValueError(f"LOST features must be one of {', '.join(FEATURES)} (got '{features}')")
        self.is_cnn = self.arch in CNN_ARCHS
        if dinoseg and self.is_cnn:
            raise ValueError("DINO-seg can only be applied to transformer networks")
        self.k_patches = k_patches
        self.max_objects = max_objects
        self.min_score = min_score
        self.amp = amp
        self.features = features
        self.dinoseg = dinoseg
        self.dinoseg_head = dinoseg_head
        self.resnet_dilate = resnet_dilate
        self.vit_overrides = vit_overrides
        self._model: Optional[torch.nn.Module] = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            if self.is_cnn:
                from cad.backbones.cnn import build_cnn

                self._model = build_cnn(self.arch, self.weights, self.resnet_dilate, self.device)
            else:
                from cad.backbones.vit import DINO_INTERPOLATE_OFFSET

                vit = LazyViT.model.fget(self)
                vit.interpolate_offset = DINO_INTERPOLATE_OFFSET
                heads = vit.blocks[-1].attn.num_heads
                if self.dinoseg and not 0 <= self.dinoseg_head < heads:
                    raise ConfigError(f"DINO-seg head {self.dinoseg_head} does not exist: {self.arch} has {heads} heads")
        return self._model

    @property
    def stride(self) -> int:
        """What inputs are padded to a multiple of: the ViT's patch size, LOST's 16 for CNNs."""
        from cad.backbones.cnn import LOST_STRIDE

        return LOST_STRIDE if self.is_cnn else int(self.model.patch_embed.patch_size[0])

    def grid_features(self, batch: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], Scale, Optional[torch.Tensor]]:
        """(features (B, N, C), grid (h, w), pixels per cell, CLS attention (B, heads, N) or None)
        of a batch of padded, normalised images: the chosen ViT projection, or the CNN map."""
        from cad.backbones.cnn import cnn_features
        from cad.backbones.features import extract_features

        if self.is_cnn:
            feats, grid, scales = cnn_features(self.model, batch)
            return feats, grid, scales, None
        out = extract_features(self.model, batch, amp=self.amp)
        chosen = {"k": out.keys, "q": out.queries, "v": out.values}[self.features]
        return chosen, out.grid, out.patch_size, out.cls_attn

    def discover(self, images: List[np.ndarray]) -> List[List[LostObject]]:
        """LOST objects of RGB uint8 images (H, W, 3), in order; same-size images are batched."""
        from cad.backbones.features import preprocess_lost

        stride = self.stride
        tensors = [preprocess_lost(image, stride) for image in images]
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, tensor in enumerate(tensors):
            groups.setdefault(tuple(tensor.shape[-2:]), []).append(i)
        results: List[List[LostObject]] = [[] for _ in images]
        for members in groups.values():
            batch = torch.stack([tensors[i] for i in members]).to(self.device)
            feats, grid, scale, cls_attn = self.grid_features(batch)
            for j, i in enumerate(members):
                if self.dinoseg:
                    box = dino_seg(cls_attn[j], grid, scale, self.dinoseg_head)
                    empty = np.zeros(grid, bool)
                    results[i] = [LostObject(-1, np.zeros(0, np.int64), empty, empty, box, 1.0)]
                else:
                    results[i] = lost_multi(
                        feats[j], grid, scale, images[i].shape[:2], self.k_patches, self.max_objects, self.min_score
                    )
        return results

    def stage1(self, images: List[DiscoveryImage]) -> List[Dict[str, np.ndarray]]:
        arrays = []
        for item, objects in zip(images, self.discover([item.image for item in images])):
            arrays.append(
                {
                    "boxes": np.stack([o.box for o in objects]).astype(np.float32),
                    "scores": np.array([o.score for o in objects], dtype=np.float32),
                    "seeds": np.array([o.seed for o in objects], dtype=np.int64),
                    "grid": np.array(objects[0].mask.shape, dtype=np.int64),
                }
            )
        return arrays

    def stage2(self, image: DiscoveryImage, arrays: Dict[str, np.ndarray]) -> List[Dict]:
        return boxes_to_annotations(arrays["boxes"], arrays["scores"])


def boxes_to_annotations(boxes: np.ndarray, scores: np.ndarray) -> List[Dict]:
    """(n, 4) [x0, y0, x1, y1] boxes and scores -> COCO annotation dicts (bbox [x, y, w, h], score)."""
    return [
        {"bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score)}
        for (x0, y0, x1, y1), score in zip(boxes.tolist(), scores.tolist())
    ]
