"""Class-agnostic COCO JSON of pseudo-labels: RLE encoding, annotation checks, assembly.

The format (written by `tools/discover.py`, read by the `imagenet_train_{maskcut,votecut}` splits):
`images` (id, file_name, width, height),
`annotations` (id, image_id, category_id 1, bbox [x, y, w, h] in original pixels, score, area,
iscrowd 0, and for mask methods `segmentation` as compressed RLE at the original size),
`categories` [{id: 1, name: "object"}].
"""
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np
import pycocotools.mask as mask_util

from cad.utils.io import atomic_write_json

CATEGORIES = [{"id": 1, "name": "object"}]


def normalize_annotation(ann: Mapping, image_id: int, height: int, width: int) -> Dict:
    """One method annotation as plain JSON types, with `image_id`, `category_id`, `area`, `iscrowd`.

    Checks that `bbox` has 4 finite values and that a `segmentation` RLE has the original size
    [height, width] (a swapped width/height, a reference bug, fails here). `area` is the mask
    area for masks, else the box area. Raises ValueError with the reason.
    """
    bbox = [float(v) for v in ann["bbox"]]
    if len(bbox) != 4 or not np.all(np.isfinite(bbox)) or bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"image {image_id}: bad bbox {ann['bbox']} (expected [x, y, w, h])")
    out = {
        "image_id": int(image_id),
        "category_id": int(ann.get("category_id", 1)),
        "bbox": bbox,
        "score": float(ann.get("score", 1.0)),
        "iscrowd": 0,
    }
    if "segmentation" in ann:
        rle = dict(ann["segmentation"])
        if [int(v) for v in rle["size"]] != [int(height), int(width)]:
            raise ValueError(
                f"image {image_id}: mask RLE size {list(rle['size'])} != original [height, width] [{height}, {width}]"
            )
        counts = rle["counts"]
        rle = {"size": [int(height), int(width)], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
        out["segmentation"] = rle
        out["area"] = float(mask_util.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
    else:
        out["area"] = bbox[2] * bbox[3]
    return out


def image_entry(image_id: int, file_name: str, height: int, width: int) -> Dict:
    """A COCO `images` entry (width = number of columns, height = number of rows)."""
    return {"id": int(image_id), "file_name": str(file_name), "width": int(width), "height": int(height)}


def assemble_coco(images: Iterable[Dict], annotations: Iterable[Dict], info: Optional[Dict] = None) -> Dict:
    """The COCO dict: annotations get consecutive ids 1, 2, ... in the given order; `info` when given."""
    anns: List[Dict] = []
    for i, ann in enumerate(annotations, start=1):
        anns.append({"id": i, **{k: v for k, v in ann.items() if k != "id"}})
    coco = {"images": list(images), "annotations": anns, "categories": CATEGORIES}
    return {"info": dict(info), **coco} if info is not None else coco


def write_coco_json(path: Path, images: Iterable[Dict], annotations: Iterable[Dict], info: Optional[Dict] = None) -> Dict:
    """Assemble and write the COCO JSON atomically; returns the dict written."""
    coco = assemble_coco(images, annotations, info)
    atomic_write_json(Path(path), coco)
    return coco
