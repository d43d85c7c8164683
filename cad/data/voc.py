"""PASCAL VOC splits (XML boxes): class-agnostic (LOST's CorLoc, LOST+CAD) or with VOC's 20 classes
(LOST+OD's Hungarian-matched evaluation)."""
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from cad.data.coco import CLASS_AGNOSTIC_METADATA
from cad.data.paths import require

SECTION = "PASCAL VOC"

# PASCAL VOC's classes in the order of Detectron2's and LOST's code (contiguous ids 0..19).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _flag(obj: ET.Element, tag: str) -> int:
    node = obj.find(tag)
    return int(node.text) if node is not None and node.text else 0


def load_voc(
    dirname: Path, split: str, name: str, class_names: Optional[Sequence[str]] = None, drop_difficult: bool = False
) -> List[Dict]:
    """Detectron2 dicts of the VOC-layout `ImageSets/Main/{split}.txt` images.

    As Detectron2's `load_voc_instances` (and LOST's reference code): `image_id` is the file id
    string, the 1-based XML `xmin`/`ymin` are shifted by −1 pixel, `xmax`/`ymax` kept, XYXY_ABS.
    Each annotation also carries the XML's `difficult` and `truncated` flags (0 when absent).
    `class_names` None: every box is class 0 and any `<name>` is accepted (a custom VOC-format
    dataset need not use VOC's classes); else `category_id` is the name's index and an unknown
    name is an error. `drop_difficult` leaves out difficult objects (LOST's COCO-style VOC files
    written by tools/prepare_voc_data_in_coco_style.py do).
    """
    dirname = Path(dirname)
    ids_file = require(dirname / "ImageSets" / "Main" / f"{split}.txt", name, SECTION)
    annotations_dir = require(dirname / "Annotations", name, SECTION)
    dicts = []
    for fileid in np.loadtxt(ids_file, dtype=str, ndmin=1):
        tree = ET.parse(annotations_dir / f"{fileid}.xml")
        instances = []
        for obj in tree.findall("object"):
            difficult = _flag(obj, "difficult")
            if drop_difficult and difficult:
                continue
            cls = obj.find("name").text
            if class_names is None:
                category = 0
            elif cls in class_names:
                category = list(class_names).index(cls)
            else:
                raise ValueError(f"dataset '{name}': unknown class '{cls}' in {annotations_dir / f'{fileid}.xml'}")
            box = obj.find("bndbox")
            bbox = [float(box.find(x).text) for x in ("xmin", "ymin", "xmax", "ymax")]
            bbox[0] -= 1.0
            bbox[1] -= 1.0
            instances.append({
                "category_id": category, "bbox": bbox, "bbox_mode": BoxMode.XYXY_ABS,
                "difficult": difficult, "truncated": _flag(obj, "truncated"),
            })
        dicts.append({
            "file_name": str(dirname / "JPEGImages" / f"{fileid}.jpg"),
            "image_id": str(fileid),
            "height": int(tree.findall("./size/height")[0].text),
            "width": int(tree.findall("./size/width")[0].text),
            "annotations": instances,
        })
    return dicts


def register_class_agnostic_voc(
    name: str, dirname: Path, split: str, year: int, evaluator_type: str, drop_difficult: bool = False
) -> None:
    """A VOC split with every box as "object" (CorLoc, class-agnostic AP)."""
    DatasetCatalog.register(name, lambda: load_voc(Path(dirname), split, name, drop_difficult=drop_difficult))
    MetadataCatalog.get(name).set(
        dirname=str(dirname), split=split, year=year, evaluator_type=evaluator_type, **CLASS_AGNOSTIC_METADATA
    )


def register_voc_classes(name: str, dirname: Path, split: str, year: int, evaluator_type: str) -> None:
    """A VOC split with its 20 classes (`VOC_CLASSES`), difficult objects flagged."""
    DatasetCatalog.register(name, lambda: load_voc(Path(dirname), split, name, VOC_CLASSES))
    MetadataCatalog.get(name).set(
        dirname=str(dirname), split=split, year=year, evaluator_type=evaluator_type, thing_classes=list(VOC_CLASSES)
    )
