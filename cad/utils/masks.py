"""Binary masks <-> COCO compressed RLE (pycocotools), JSON-ready."""
from typing import Dict, Mapping

import numpy as np
import pycocotools.mask as mask_util


def encode_mask(mask: np.ndarray) -> Dict:
    """Compressed RLE (JSON-ready: `counts` is a str) of a binary mask (H, W)."""
    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_mask(rle: Mapping) -> np.ndarray:
    """Binary mask (H, W) bool of a compressed RLE (counts as str or bytes)."""
    counts = rle["counts"]
    return mask_util.decode({"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}).astype(bool)
