"""Copy-paste augmentation on a mapped batch (CutLER/CuVLER `copy_and_paste`, trainer-side).

Image i of a per-process batch of B receives objects cut from image B-1-i (the batch in reverse
order, taken before any pasting). The source image and its chosen masks are resized to r times
the target's size, r ~ U(min_ratio, max_ratio), and placed at a random offset. Pasted objects
that would cover >= 50 % of an existing object's mask are dropped; the rest are composited on
top, existing masks lose the pasted pixels (objects left empty are removed), and every box is
recomputed from its mask. Pasted instances keep their own fields (`gt_scores`, `gt_classes`).

Fixes of the quirks of the official code (CutLER `cutler/engine/train_loop.py`, `copy_and_paste`): resized masks
are thresholded at 0.5 (not any non-zero value), a random number of objects is uniform on
[1, n] (the reference never copies all n), empty pasted masks are dropped, and boxes are always
recomputed from masks (the reference swaps x/y offsets when the target has no objects).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.structures import BitMasks, Instances
from torch.nn import functional as F

# An existing object is "occluded" when a pasted mask covers at least this fraction of it.
OCCLUSION_THRESH = 0.5


@dataclass(frozen=True)
class CopyPasteParams:
    """Draws of one paste: source object indices, pasted size (h, w) and top-left offset (y, x)."""

    chosen: torch.Tensor
    size: Tuple[int, int]
    offset: Tuple[int, int]


def _bitmask_tensor(instances: Instances) -> torch.Tensor:
    if not instances.has("gt_masks") or not isinstance(instances.gt_masks, BitMasks):
        raise ValueError("copy-paste needs bitmask instance masks: set MODEL.MASK_ON True and INPUT.MASK_FORMAT bitmask")
    return instances.gt_masks.tensor


def paste_objects(
    target_image: torch.Tensor,
    target: Instances,
    source_image: torch.Tensor,
    source: Instances,
    params: CopyPasteParams,
    occlusion_thresh: float = OCCLUSION_THRESH,
) -> Tuple[torch.Tensor, Instances]:
    """Paste objects `params.chosen` of `source` onto `target`.

    Args:
        target_image, source_image: (C, H, W) and (C, Hs, Ws) images (any dtype).
        target, source: their `Instances` with `gt_masks` (BitMasks) and any other per-object
            fields (boxes are recomputed from masks).
        params: indices into `source`, pasted size (h, w) <= (H, W), offset (y, x).

    Returns:
        The new (C, H, W) image and `Instances` (surviving target objects first, then pasted
        ones); the inputs unchanged when no pasted object survives.
    """
    _, height, width = target_image.shape
    h, w = params.size
    y, x = params.offset
    src_masks = _bitmask_tensor(source)[params.chosen].float()
    resized_masks = F.interpolate(src_masks[None], size=(h, w), mode="bilinear", align_corners=False)[0] >= 0.5
    pasted = torch.zeros((len(params.chosen), height, width), dtype=torch.bool, device=target_image.device)
    pasted[:, y : y + h, x : x + w] = resized_masks
    tgt_masks = _bitmask_tensor(target) if len(target) else pasted.new_zeros((0, height, width))
    covered = pasted.flatten(1).float() @ tgt_masks.flatten(1).float().T  # (k, n) intersections
    occludes = (covered >= occlusion_thresh * tgt_masks.flatten(1).sum(1).clamp(min=1)).any(dim=1)
    keep = pasted.flatten(1).any(dim=1) & ~occludes
    if not keep.any():
        return target_image, target
    pasted = pasted[keep]
    alpha = pasted.any(dim=0)

    resized_image = F.interpolate(source_image[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
    canvas = target_image.clone()
    if not target_image.dtype.is_floating_point:
        resized_image = resized_image.round().clamp(0, 255)
    canvas[:, y : y + h, x : x + w] = resized_image.to(target_image.dtype)
    image = torch.where(alpha[None], canvas, target_image)

    remaining = tgt_masks & ~alpha
    alive = remaining.flatten(1).any(dim=1)
    survivors = target[alive] if len(target) else target
    if len(target):
        survivors.gt_masks = BitMasks(remaining[alive])
    kept_sources = params.chosen[keep.nonzero()[:, 0].to(params.chosen.device)]
    added = Instances((height, width), **{k: v[kept_sources] for k, v in source.get_fields().items()})
    added.gt_masks = BitMasks(pasted)
    merged = Instances.cat([survivors, added]) if len(survivors) else added
    merged.gt_boxes = merged.gt_masks.get_bounding_boxes()
    return image, merged


def draw_params(
    rng: np.random.Generator, num_objects: int, target_size: Tuple[int, int],
    min_ratio: float, max_ratio: float, random_num: bool,
) -> CopyPasteParams:
    """Random draws of one paste: k objects (uniform on [1, n] or all n), chosen without
    replacement; r ~ U(min_ratio, max_ratio) of the target's (H, W); a uniform offset inside it."""
    k = int(rng.integers(1, num_objects + 1)) if random_num else num_objects
    chosen = torch.as_tensor(np.sort(rng.choice(num_objects, size=k, replace=False)), dtype=torch.long)
    r = float(rng.uniform(min_ratio, max_ratio))
    height, width = target_size
    h, w = max(1, min(height, round(r * height))), max(1, min(width, round(r * width)))
    offset = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)))
    return CopyPasteParams(chosen, (h, w), offset)


def copy_paste_batch(
    batch: List[Dict],
    rng: np.random.Generator,
    rate: float = 1.0,
    min_ratio: float = 0.3,
    max_ratio: float = 1.0,
    random_num: bool = True,
) -> List[Dict]:
    """Copy-paste on a mapped batch (dicts with `image` (C, H, W) and `instances`).

    Image i receives objects from image B-1-i with probability `rate` when that source has
    objects. Returns new dicts; the input dicts, images and instances are not modified.
    """
    sources = [(d["image"], d["instances"]) for d in reversed(batch)]
    out = []
    for d, (src_image, src) in zip(batch, sources):
        if len(src) == 0 or rng.random() >= rate:
            out.append(d)
            continue
        params = draw_params(rng, len(src), tuple(d["image"].shape[1:]), min_ratio, max_ratio, random_num)
        image, instances = paste_objects(d["image"], d["instances"], src_image, src, params)
        out.append({**d, "image": image, "instances": instances})
    return out


class CopyPasteLoader:
    """Wraps a training data loader: every batch it yields goes through `copy_paste_batch`.

    Detectron2's `SimpleTrainer.run_step` draws batches from it unchanged, so copy-paste runs in
    the trainer process on each per-GPU batch, after the mapper, as in the reference.
    """

    def __init__(self, loader, rate: float, min_ratio: float, max_ratio: float, random_num: bool,
                 seed: Optional[int] = None):
        self.loader = loader
        self.kwargs = dict(rate=rate, min_ratio=min_ratio, max_ratio=max_ratio, random_num=random_num)
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        for batch in self.loader:
            yield copy_paste_batch(batch, self.rng, **self.kwargs)
