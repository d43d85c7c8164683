"""Inputs and outputs shared by MaskCut and VoteCut: fixed-size ViT input, ViT loading, mask annotations."""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from cad.utils.masks import encode_mask

__all__ = ["fixed_size", "vit_batch", "mask_annotation", "method_models"]


def fixed_size(resolution: int, patch_size: int) -> int:
    """Square input side: `resolution` rounded down to a multiple of the patch size.

    480 gives 480 for /8 and /16 and 476 for /14, the sizes of CutLER (480) and CuVLER (480 DINO,
    476 DINOv2).
    """
    side = resolution - resolution % patch_size
    if side <= 0:
        raise ValueError(f"resolution {resolution} is smaller than the patch size {patch_size}")
    return side


def vit_batch(images: Sequence[np.ndarray], side: int) -> torch.Tensor:
    """RGB uint8 images (H, W, 3) -> (B, 3, side, side) ImageNet-normalised tensor.

    Resized with PIL LANCZOS to side x side, aspect not kept (CutLER, CuVLER).
    """
    from cad.backbones.features import normalize_image

    return torch.stack(
        [normalize_image(np.array(Image.fromarray(img).resize((side, side), Image.LANCZOS))) for img in images]
    )


def mask_annotation(mask: np.ndarray, score: float) -> Dict:
    """COCO annotation of a binary mask (H, W): compressed RLE at that size, bbox [x, y, w, h], score."""
    rle = encode_mask(mask)
    bbox = [float(v) for v in mask_util.toBbox(rle)]
    return {"category_id": 1, "bbox": bbox, "score": float(score), "segmentation": rle}


def method_models(options, default: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """(arch, weights) pairs from `options.models` (pipeline `MethodOptions`), else `default` archs
    with weights from the torch.hub cache (None)."""
    models = tuple(getattr(options, "models", ()) or ())
    return [tuple(m) for m in models] if models else [(arch, None) for arch in default]
