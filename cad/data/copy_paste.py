"""Copy-paste augmentation on a mapped batch (CutLER/CuVLER `copy_and_paste`).

The reference runs it in the training step on each GPU's mapped batch; cad runs the same function
on the same batch in a DataLoader worker (`CopyPaste` as the batch transform of
`cad.data.worker_batches`, which explains why the batches and pairs are the same).

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
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances
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


def _count(masks: torch.Tensor) -> torch.Tensor:
    """(n, H, W) bool -> (n,) float32 pixel counts (NumPy's count is ~30x torch's on bool here)."""
    return torch.from_numpy(np.count_nonzero(masks.numpy(), axis=(1, 2)).astype(np.float32))


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(n, H, W) bool -> (n, 4) float32 tight XYXY boxes, zeros for an empty mask: the values of
    Detectron2's `BitMasks.get_bounding_boxes`, vectorised."""
    m = masks.numpy()
    cols, rows = m.any(axis=1), m.any(axis=2)  # (n, W), (n, H)
    boxes = np.stack([cols.argmax(1), rows.argmax(1),
                      m.shape[2] - cols[:, ::-1].argmax(1), m.shape[1] - rows[:, ::-1].argmax(1)], axis=1)
    return torch.from_numpy(np.where(cols.any(1, keepdims=True), boxes, 0).astype(np.float32))


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
        target_image, source_image: (C, H, W) and (C, Hs, Ws) CPU images (any dtype).
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
    window = (slice(None), slice(y, y + h), slice(x, x + w))  # every pasted pixel lies in it: work there only
    src_masks = _bitmask_tensor(source)[params.chosen].float()
    pasted = F.interpolate(src_masks[None], size=(h, w), mode="bilinear", align_corners=False)[0] >= 0.5  # (k, h, w)
    tgt_masks = _bitmask_tensor(target) if len(target) else pasted.new_zeros((0, height, width))
    tgt_window = tgt_masks[window]
    covered = pasted.flatten(1).float() @ tgt_window.flatten(1).float().T  # (k, n) intersections
    area = _count(tgt_masks)
    occludes = (covered >= occlusion_thresh * area.clamp(min=1)).any(dim=1)
    keep = torch.from_numpy(pasted.numpy().any(axis=(1, 2))) & ~occludes
    if not keep.any():
        return target_image, target
    pasted = pasted[keep]
    alpha = torch.from_numpy(pasted.numpy().any(axis=0))  # (h, w)

    resized_image = F.interpolate(source_image[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
    if not target_image.dtype.is_floating_point:
        resized_image = resized_image.round().clamp(0, 255)
    image = target_image.clone()
    image[window] = torch.where(alpha[None], resized_image.to(target_image.dtype), target_image[window])

    alive = area > _count(tgt_window & alpha)
    survivors = target[alive] if len(target) else target
    boxes = []
    if len(survivors):
        remaining = tgt_masks[alive]
        remaining[window] &= ~alpha
        survivors.gt_masks = BitMasks(remaining)
        boxes.append(mask_boxes(remaining))
    kept_sources = params.chosen[keep.nonzero()[:, 0]]
    added = Instances((height, width), **{k: v[kept_sources] for k, v in source.get_fields().items()})
    full = pasted.new_zeros((len(pasted), height, width))
    full[window] = pasted
    added.gt_masks = BitMasks(full)
    boxes.append(mask_boxes(pasted) + torch.tensor([x, y, x, y], dtype=torch.float32))
    merged = Instances.cat([survivors, added]) if len(survivors) else added
    merged.gt_boxes = Boxes(torch.cat(boxes))
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


class CopyPaste:
    """`copy_paste_batch` with fixed parameters, as a batch transform `(batch, rng) -> batch`
    (picklable: it runs in the DataLoader workers, `cad.data.worker_batches`)."""

    def __init__(self, rate: float, min_ratio: float, max_ratio: float, random_num: bool):
        self.kwargs = dict(rate=rate, min_ratio=min_ratio, max_ratio=max_ratio, random_num=random_num)

    @classmethod
    def from_config(cls, cfg) -> "CopyPaste":
        d = cfg.DATALOADER
        return cls(d.COPY_PASTE_RATE, d.COPY_PASTE_MIN_RATIO, d.COPY_PASTE_MAX_RATIO, d.COPY_PASTE_RANDOM_NUM)

    def __call__(self, batch: List[Dict], rng: np.random.Generator) -> List[Dict]:
        return copy_paste_batch(batch, rng, **self.kwargs)
