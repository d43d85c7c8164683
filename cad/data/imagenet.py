"""ImageNet splits in class-agnostic COCO format: pseudo-labels made by tools/discover.py, val boxes.

Layout under `$DETECTRON2_DATASETS` (datasets/README.md, section "ImageNet"):

    imagenet/train/<wnid>/<image>.JPEG
    imagenet/val/<image>.JPEG
    imagenet/annotations/imagenet_train_votecut.json    tools/discover.py votecut --images imagenet/train
    imagenet/annotations/imagenet_train_maskcut.json    tools/discover.py maskcut --images imagenet/train
    imagenet/annotations/imagenet_val_cls_agnostic.json ILSVRC2012 val boxes, one class (boxes only)

`file_name`s in the JSONs are relative to the image folder (`n01440764/n01440764_10026.JPEG`),
as tools/discover.py writes them. The pseudo-label splits keep each annotation's `score`
(CuVLER's soft targets).
"""
from pathlib import Path

from cad.data.coco import register_class_agnostic_coco

# name -> (image folder, annotation JSON, extra metadata), relative to the dataset root. The
# reference names are CuVLER's `votecut_imagenet_train` / `cls_agnostic_imagenet_val` and
# CutLER's `imagenet_train` (MaskCut, imagenet_train_fixsize480_tau0.15_N3.json).
IMAGENET_SPLITS = {
    "imagenet_train_votecut": ("imagenet/train", "imagenet/annotations/imagenet_train_votecut.json", {}),
    "imagenet_train_maskcut": ("imagenet/train", "imagenet/annotations/imagenet_train_maskcut.json", {}),
    # Boxes only (as CuVLER's imagenet_val_cls_agnostic.json): evaluate the bbox task.
    "imagenet_val_cls_agnostic": ("imagenet/val", "imagenet/annotations/imagenet_val_cls_agnostic.json", {"eval_tasks": ("bbox",)}),
}


def register_imagenet_splits(root: Path) -> None:
    """Register the ImageNet class-agnostic splits under dataset `root` (nothing is read)."""
    for name, (images, ann, extra) in IMAGENET_SPLITS.items():
        register_class_agnostic_coco(name, root / ann, root / images, "ImageNet", **extra)
