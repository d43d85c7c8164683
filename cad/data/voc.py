"""PASCAL VOC splits (XML boxes), loaded class-agnostically."""
from pathlib import Path
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances

from cad.data.coco import CLASS_AGNOSTIC_METADATA
from cad.data.paths import require

SECTION = "PASCAL VOC"


class _AnyClassName(tuple):
    """The class list handed to Detectron2's `load_voc_instances`: every `<name>` is class 0."""

    def index(self, name, *args) -> int:  # noqa: ARG002  (tuple.index's signature)
        return 0


def load_class_agnostic_voc(dirname: Path, split: str, name: str) -> List[Dict]:
    """VOC-layout `ImageSets/Main/{split}.txt` images with every box as class 0 ("object").

    Any `<name>` in the XML is accepted (a custom VOC-format dataset need not use VOC's 20
    classes). Box coordinates follow Detectron2 (and LOST's reference): the 1-based XML
    `xmin`/`ymin` are shifted by −1 pixel, `xmax`/`ymax` kept, XYXY_ABS.
    """
    require(Path(dirname) / "ImageSets" / "Main" / f"{split}.txt", name, SECTION)
    require(Path(dirname) / "Annotations", name, SECTION)
    return load_voc_instances(str(dirname), split, _AnyClassName(("object",)))


def register_class_agnostic_voc(name: str, dirname: Path, split: str, year: int, evaluator_type: str) -> None:
    DatasetCatalog.register(name, lambda: load_class_agnostic_voc(Path(dirname), split, name))
    MetadataCatalog.get(name).set(
        dirname=str(dirname), split=split, year=year, evaluator_type=evaluator_type, **CLASS_AGNOSTIC_METADATA
    )
