"""COCO20k: the 19,817 COCO train2014 images of LOST's single-object discovery benchmark.

The split is `coco/annotations/coco_20k_filenames.txt` (LOST's `datasets/coco_20k_filenames.txt`,
one `COCO_train2014_<12-digit id>.jpg` per line, in the LOST repository; cad does not ship it)
applied to `coco/annotations/instances_train2014.json`, as LOST's `select_coco_20k` does: every
annotation of the listed images, kept in the order of the list. Boxes stay in COCO XYWH; the
CorLoc evaluator leaves out `iscrowd` boxes and rounds the others to integers like LOST
(metadata `corloc_round_gt`).
"""
import json
import logging
from pathlib import Path
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from cad.data.coco import CLASS_AGNOSTIC_METADATA
from cad.data.paths import require

logger = logging.getLogger(__name__)

SECTION = "COCO20k"
IDS_FILE = "coco/annotations/coco_20k_filenames.txt"
ANNOTATIONS = "coco/annotations/instances_train2014.json"
IMAGES = "coco/train2014"


def read_coco20k_ids(path: Path) -> List[int]:
    """Image ids of a file-name list: the integer after the last '_' of each non-empty line."""
    ids = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            ids.append(int(line.rsplit("/", 1)[-1].split("_")[-1].split(".")[0]))
        except ValueError:
            raise ValueError(f"{path}:{number}: cannot read a COCO image id from '{line}'") from None
    return ids


def load_coco20k(root: Path, name: str = "coco20k_train") -> List[Dict]:
    """Detectron2 dicts of the listed train2014 images, every category mapped to 0 ("object")."""
    root = Path(root)
    ids = read_coco20k_ids(require(root / IDS_FILE, name, SECTION))
    image_root = require(root / IMAGES, name, SECTION)
    with open(require(root / ANNOTATIONS, name, SECTION)) as f:
        coco = json.load(f)
    images = {img["id"]: img for img in coco["images"]}
    missing = [i for i in ids if i not in images]
    if missing:
        raise ValueError(f"dataset '{name}': {len(missing)} listed ids are not in {ANNOTATIONS} (first: {missing[0]})")
    anns: Dict[int, List[Dict]] = {i: [] for i in ids}
    for ann in coco["annotations"]:
        if ann["image_id"] in anns:
            anns[ann["image_id"]].append(ann)
    dicts = []
    for image_id in ids:
        img = images[image_id]
        dicts.append(
            {
                "file_name": str(image_root / img["file_name"]),
                "image_id": image_id,
                "height": img["height"],
                "width": img["width"],
                "annotations": [
                    {
                        "bbox": list(ann["bbox"]),
                        "bbox_mode": BoxMode.XYWH_ABS,
                        "category_id": 0,
                        "iscrowd": int(ann.get("iscrowd", 0)),
                    }
                    for ann in anns[image_id]
                ],
            }
        )
    logger.info("Loaded %d COCO20k images from %s", len(dicts), root / IDS_FILE)
    return dicts


def register_coco20k(root: Path, name: str = "coco20k_train", evaluator_type: str = "corloc") -> None:
    """Register COCO20k (CorLoc evaluation by default); nothing is read until the split is loaded."""
    DatasetCatalog.register(name, lambda: load_coco20k(Path(root), name))
    MetadataCatalog.get(name).set(
        image_root=str(Path(root) / IMAGES),
        ids_file=str(Path(root) / IDS_FILE),
        evaluator_type=evaluator_type,
        corloc_round_gt=True,
        **CLASS_AGNOSTIC_METADATA,
    )
