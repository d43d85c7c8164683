"""COCO-format splits, loaded class-agnostically (every category becomes "object")."""
import logging
from pathlib import Path
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from cad.data.paths import require

logger = logging.getLogger(__name__)

# One foreground class, COCO category id 1, as in CutLER/CuVLER's class-agnostic splits.
CLASS_AGNOSTIC_METADATA = {
    "thing_classes": ["object"],
    "thing_dataset_id_to_contiguous_id": {1: 0},
}


def load_class_agnostic_coco(
    json_file: Path,
    image_root: Path,
    split: str,
    section: str,
    extra_annotation_keys: Sequence[str] = ("score",),
) -> List[Dict]:
    """Load a COCO JSON as Detectron2 dataset dicts with every `category_id` set to 0.

    `extra_annotation_keys` are kept on each annotation (e.g. the pseudo-label `score`).
    Raises `DatasetMissingError` naming the path when the JSON or the image folder is missing.
    """
    require(image_root, split, section)
    require(json_file, split, section)
    dicts = load_coco_json(
        str(json_file), str(image_root), dataset_name=None, extra_annotation_keys=list(extra_annotation_keys)
    )
    for record in dicts:
        for ann in record.get("annotations", []):
            ann["category_id"] = 0
    logger.info("Loaded %d images of '%s' class-agnostically from %s", len(dicts), split, json_file)
    return dicts


def register_class_agnostic_coco(
    name: str, json_file: Path, image_root: Path, section: str, evaluator_type: str = "class_agnostic", **metadata
) -> None:
    """Register a class-agnostic COCO-format split; nothing is read until it is loaded."""
    DatasetCatalog.register(
        name, lambda: load_class_agnostic_coco(Path(json_file), Path(image_root), name, section)
    )
    MetadataCatalog.get(name).set(
        image_root=str(image_root),
        gt_json_file=str(json_file),
        evaluator_type=evaluator_type,
        **CLASS_AGNOSTIC_METADATA,
        **metadata,
    )


def load_clustered_coco(json_file: Path, image_root: Path, name: str, section: str) -> List[Dict]:
    """Dataset dicts of a COCO JSON with pseudo-classes (tools/cluster_pseudo_labels.py: categories
    1..K = clusters), contiguous classes 0..K-1 in category-id order; the split's `thing_classes`
    and id map are set from the JSON's categories when it is loaded."""
    require(image_root, name, section)
    require(json_file, name, section)
    return load_coco_json(str(json_file), str(image_root), dataset_name=name)


def register_clustered_coco(name: str, json_file: Path, image_root: Path, section: str) -> None:
    """Register a class-aware pseudo-label split (LOST+OD training); nothing is read until it is loaded."""
    DatasetCatalog.register(name, lambda: load_clustered_coco(Path(json_file), Path(image_root), name, section))
    MetadataCatalog.get(name).set(image_root=str(image_root), gt_json_file=str(json_file), evaluator_type="coco")
