"""LOST's figures (valeoai/LOST `visualizations.py`, `main_lost.py --visualize fms|seed_expansion|pred`).

- `fms` (the paper's Figure 2): the seed's binarised similarity map (patches positively correlated
  with the seed in grey (128, 133, 133), the seed in red (204, 37, 41), the rest black) and the
  inverse degree map 1 / #{q : f_p·f_q > 0} (self included, as the reference's `binA.sum(-1)`)
  in matplotlib's default colour map, both upsampled (nearest) to the padded input size;
- `seed_expansion` (Figure 3): on the image, the box of the seed's own positive-similarity
  component before expansion in yellow (204, 204, 0), LOST's box after expansion in magenta
  (204, 0, 204), the seed patch filled in red;
- `pred`: LOST's box in red (255, 0, 0). Boxes are 3-pixel rectangles at int() corners (cv2).
"""
from typing import Dict, Sequence

import cv2
import numpy as np
import torch

from cad.discovery.lost import LOST, LostObject, Scale, lost, seed_component_box

__all__ = ["VISUALIZATIONS", "fms_maps", "seed_expansion_image", "prediction_image", "lost_visualizations"]

VISUALIZATIONS = ("fms", "seed_expansion", "pred")


def _upsample(grid_map: np.ndarray, scale: Scale) -> np.ndarray:
    """(h, w, ...) -> nearest upsampling by the (rows, cols) scales (torch's `scale_factor` rule)."""
    sy, sx = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    h, w = grid_map.shape[:2]
    rows = np.minimum((np.arange(int(h * sy)) / sy).astype(int), h - 1)
    cols = np.minimum((np.arange(int(w * sx)) / sx).astype(int), w - 1)
    return grid_map[rows][:, cols]


def _colormap(values: np.ndarray) -> np.ndarray:
    """matplotlib's default colour map over [min, max] (as `plt.imsave`), RGB uint8."""
    import matplotlib

    lo, hi = float(values.min()), float(values.max())
    normalized = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (matplotlib.colormaps["viridis"](normalized)[..., :3] * 255).round().astype(np.uint8)


def fms_maps(feats: torch.Tensor, grid, scale: Scale, seed: int) -> Dict[str, np.ndarray]:
    """{"corr": seed similarity map, "deg": inverse degree map}, RGB uint8 at the padded size;
    feats (N = h*w, C) as LOST used them."""
    h, w = grid
    positive = (feats @ feats.T) > 0  # (N, N), self included
    corr = np.zeros((h * w, 3))
    corr[positive[seed].cpu().numpy()] = np.array([128, 133, 133]) / 255
    corr[seed] = np.array([204, 37, 41]) / 255
    corr = _upsample(corr.reshape(h, w, 3), scale)
    degree = positive.sum(1).float().cpu().numpy().reshape(h, w)
    return {"corr": (corr * 255).round().astype(np.uint8), "deg": _colormap(_upsample(1.0 / degree, scale))}


def _rectangle(image: np.ndarray, box: Sequence[float], colour) -> None:
    cv2.rectangle(image, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), colour, 3)


def seed_expansion_image(image: np.ndarray, obj: LostObject, seed_box: Sequence[float], grid, scale: Scale) -> np.ndarray:
    """The seed's box before expansion (yellow), LOST's box (magenta) and the seed patch (red)."""
    out = np.ascontiguousarray(image.copy())
    _rectangle(out, seed_box, (204, 204, 0))
    _rectangle(out, obj.box, (204, 0, 204))
    sy, sx = scale if isinstance(scale, (tuple, list)) else (scale, scale)
    row, col = divmod(int(obj.seed), grid[1])
    out[int(row * sy) : int(row * sy + sy), int(col * sx) : int(col * sx + sx)] = (204, 37, 41)
    return out


def prediction_image(image: np.ndarray, obj: LostObject) -> np.ndarray:
    """LOST's box in red."""
    out = np.ascontiguousarray(image.copy())
    _rectangle(out, obj.box, (255, 0, 0))
    return out


def lost_visualizations(method: LOST, image: np.ndarray, kinds: Sequence[str]) -> Dict[str, np.ndarray]:
    """The figures `kinds` (of `VISUALIZATIONS`) of LOST on one RGB uint8 image, by file suffix:
    "corr", "deg" (fms), "seed_expansion", "pred"."""
    from cad.backbones.features import preprocess_lost

    unknown = sorted(set(kinds) - set(VISUALIZATIONS))
    if unknown:
        raise ValueError(f"unknown visualization(s) {unknown}; choose from {', '.join(VISUALIZATIONS)}")
    if method.dinoseg:
        raise ValueError("the LOST figures need LOST, not the DINO-seg baseline")
    batch = preprocess_lost(image, method.stride)[None].to(method.device)
    feats, grid, scale, _ = method.grid_features(batch)
    feats = feats[0]
    obj = lost(feats, grid, scale, image.shape[:2], method.k_patches)
    out: Dict[str, np.ndarray] = {}
    if "fms" in kinds:
        out.update(fms_maps(feats, grid, scale, obj.seed))
    if "seed_expansion" in kinds:
        seed_mask = ((feats @ feats[obj.seed]) > 0).view(grid).cpu().numpy()
        _, seed_box = seed_component_box(seed_mask, obj.seed, scale, image.shape[:2])
        out["seed_expansion"] = seed_expansion_image(image, obj, seed_box, grid, scale)
    if "pred" in kinds:
        out["pred"] = prediction_image(image, obj)
    return out
