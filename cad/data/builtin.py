"""Predefined splits under `$DETECTRON2_DATASETS` (see datasets/README.md).

Registration only records paths; nothing touches the disk until a split is loaded, and a
missing split then raises one `DatasetMissingError` naming the path it looked for.
"""
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.data.cityscapes_lists import register_official_list_splits
from cad.data.coco import CLASS_AGNOSTIC_METADATA, register_class_agnostic_coco, register_clustered_coco
from cad.data.coco20k import register_coco20k
from cad.data.imagenet import register_imagenet_splits
from cad.data.motion import register_motion_datasets
from cad.data.paths import datasets_root
from cad.data.self_training import register_self_training_splits
from cad.data.ssl_splits import register_standard_ssl_splits
from cad.data.synthetic import (
    SHAPES_MULTICLASS_METADATA,
    SHAPES_MULTICLASS_SPLITS,
    SHAPES_SPLITS,
    load_shapes,
    load_shapes_multiclass,
)
from cad.data.synthetic_cityscapes import register_synthetic_cityscapes
from cad.data.synthetic_pseudo import register_pseudo_shapes
from cad.data.voc import register_class_agnostic_voc, register_voc_classes

# name -> (image folder, annotation JSON, README section, extra metadata), relative to the root.
_COCO_FORMAT_SPLITS = {
    "cls_agnostic_coco_train_17": ("coco/train2017", "coco/annotations/instances_train2017.json", "COCO", {}),
    "cls_agnostic_coco_val_17": ("coco/val2017", "coco/annotations/instances_val2017.json", "COCO", {}),
    "cls_agnostic_coco20k": ("coco/train2014", "coco/annotations/coco20k_trainval_gt.json", "COCO", {}),
    # LVIS v1 val in CutLER's "cocofied" class-agnostic JSON; LVIS-style evaluation keeps 300 detections.
    "cls_agnostic_lvis_val": ("coco", "coco/annotations/lvis1.0_cocofied_val_cls_agnostic.json", "LVIS", {"max_dets": 300}),
    # LOST's boxes (tools/discover.py lost --dataset <split> --out <json>): LOST+CAD training sets.
    "voc07_trainval_lost": ("VOC2007/JPEGImages", "pseudo_labels/lost_voc07_trainval.json", "LOST pseudo-labels", {}),
    "voc12_trainval_lost": ("VOC2012/JPEGImages", "pseudo_labels/lost_voc12_trainval.json", "LOST pseudo-labels", {}),
    "coco20k_train_lost": ("coco/train2014", "pseudo_labels/lost_coco20k_train.json", "LOST pseudo-labels", {}),
}

# CuVLER's evaluation splits under CuVLER's names (shahaf-arica/CuVLER cad/data/datasets/builtin.py),
# class-agnostic COCO AP with 100 detections (CuVLER's COCOEvaluator); ground truth of the
# cross-domain, VOC, OpenImages and ImageNet files has boxes only. Image roots as CuVLER's except
# ImageNet's, which CuVLER sets to imagenet/annotations while its JSONs name files under imagenet/val
# and imagenet/train. (cls_agnostic_coco_val_17, cls_agnostic_coco20k and coco_train_17_self_training
# are registered above / in cad.data.self_training, with the standard file names instead of
# CuVLER's absolute author paths.)
_BOX_ONLY = {"eval_tasks": ("bbox",)}
_CUVLER_SPLITS = {
    "cls_agnostic_voc": ("voc", "voc/annotations/trainvaltest_voc_2007_cls_agnostic.json", _BOX_ONLY),
    "cls_agnostic_clipart": ("clipart", "clipart/annotations/traintest_clipart_cls_agnostic.json", _BOX_ONLY),
    "cls_agnostic_watercolor": ("watercolor", "watercolor/annotations/traintest_watercolor_cls_agnostic.json", _BOX_ONLY),
    "cls_agnostic_comic": ("comic", "comic/annotations/traintest_comic_cls_agnostic.json", _BOX_ONLY),
    "cls_agnostic_openimages": ("openImages/validation", "openImages/annotations/openimages_val_cls_agnostic.json", _BOX_ONLY),
    "cls_agnostic_lvis": ("coco", "coco/annotations/lvis1.0_cocofied_val_cls_agnostic.json", {}),
    "cls_agnostic_imagenet_val": ("imagenet/val", "imagenet/annotations/imagenet_val_cls_agnostic.json", _BOX_ONLY),
    "votecut_imagenet_train": ("imagenet/train", "imagenet/annotations/imagenet_votecut_pl_Kmax_3_tuam_0.2.json", {}),
}

# LOST+OD training sets: LOST's boxes clustered into pseudo-classes (tools/cluster_pseudo_labels.py);
# name -> (image folder, clustered JSON), relative to the root. Classes = the JSON's categories.
_CLUSTERED_SPLITS = {
    "voc07_trainval_lost_od": ("VOC2007/JPEGImages", "pseudo_labels/lost_od_voc07_trainval.json"),
    "voc12_trainval_lost_od": ("VOC2012/JPEGImages", "pseudo_labels/lost_od_voc12_trainval.json"),
}

# name -> (VOC folder, image-set, year, evaluator type); LOST's trainval splits are scored by CorLoc.
_VOC_SPLITS = {
    "voc07_trainval": ("VOC2007", "trainval", 2007, "corloc"),
    "voc07_test": ("VOC2007", "test", 2007, "class_agnostic"),
    "voc12_trainval": ("VOC2012", "trainval", 2012, "corloc"),
}


def register_all(root: Path) -> None:
    """Register every predefined split of this module with Detectron2's catalogs."""
    for name, (images, ann, section, extra) in _COCO_FORMAT_SPLITS.items():
        register_class_agnostic_coco(name, root / ann, root / images, section, **extra)
    for name, (images, ann, extra) in _CUVLER_SPLITS.items():
        register_class_agnostic_coco(name, root / ann, root / images, "CuVLER evaluation splits", **extra)
    for name, (folder, split, year, evaluator_type) in _VOC_SPLITS.items():
        register_class_agnostic_voc(name, root / folder, split, year, evaluator_type)
    # LOST's test sets: VOC07 test without difficult objects, class-agnostic AP (LOST+CAD,
    # `voc_2007_test_CAD_coco_style`); VOC07 test with its 20 classes, Hungarian-matched VOC AP
    # (LOST+OD, `voc_2007_test_coco_style` + tools/evaluate_unsupervised_detection_voc.py);
    # COCO20k's class-agnostic ground truth (LOST+CAD, `coco20k_train_CAD_gt`).
    register_class_agnostic_voc("voc07_test_lost_cad", root / "VOC2007", "test", 2007, "class_agnostic", drop_difficult=True)
    register_voc_classes("voc07_test_lost_od", root / "VOC2007", "test", 2007, "voc_hungarian")
    for name, (images, ann) in _CLUSTERED_SPLITS.items():
        register_clustered_coco(name, root / ann, root / images, "LOST pseudo-labels")
    register_coco20k(root)
    register_coco20k(root, "coco20k_train_lost_cad", evaluator_type="class_agnostic")
    register_imagenet_splits(root)
    for name in SHAPES_SPLITS:
        DatasetCatalog.register(name, lambda name=name: load_shapes(name, root))
        MetadataCatalog.get(name).set(evaluator_type="class_agnostic", **CLASS_AGNOSTIC_METADATA)
    register_pseudo_shapes(root)
    register_self_training_splits(root)
    for name, split in SHAPES_MULTICLASS_SPLITS.items():
        DatasetCatalog.register(name, lambda name=name, split=split: load_shapes_multiclass(name, root, split))
        MetadataCatalog.get(name).set(evaluator_type="coco", **SHAPES_MULTICLASS_METADATA)
    register_standard_ssl_splits(root)
    register_synthetic_cityscapes(root)
    register_official_list_splits(root)  # Detectron2 registers cityscapes_fine_instance_seg_train itself
    register_motion_datasets(root)


register_all(datasets_root())
