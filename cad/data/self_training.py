"""Self-training: a detector's `--eval-only` predictions become the next round's pseudo-labels.

`build_self_training_json` turns `coco_instances_results.json` (Detectron2's COCO-format
predictions, RLE masks) on a split into a class-agnostic training JSON: predictions with
score >= threshold (CuVLER: 0.2 on COCO train2017; CutLER: 0.7 then 0.65 on ImageNet), masks as
compressed RLE, degenerate boxes and empty masks dropped, `score` kept as the soft target, `area`
the mask area, image sizes from the annotation file (the reference scripts swap width/height).
With `keep_previous` (CutLER), the input annotations whose mask IoU with every kept prediction
of their image is < 0.5 are kept as well.

For an `images:DIR` split (no annotation file), the image entries are those of the folder
(`folder_images`). `tools/demo.py`'s `demo_results.json` (a COCO JSON: `images` and predictions
as `annotations`) is read as well; its own `images` are used unless a file or folder is given.
Train on the result with `--train-dataset coco:JSON:IMAGE_DIR` (`cad.data.file_splits`) or
register it with `register_self_training_split`; the reference rounds' files are predefined
splits (`register_self_training_splits`, datasets/README.md).
"""
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from cad.data.coco import register_class_agnostic_coco
from cad.discovery.export import image_entry
from cad.discovery.sources import UNREADABLE_IMAGE_ERRORS, image_size, list_image_dir
from cad.errors import UserError
from cad.utils.io import InputFileError, atomic_write_json, read_json

logger = logging.getLogger(__name__)

RESULTS_FILE = "coco_instances_results.json"
# What tools/demo.py writes: a COCO JSON whose annotations are the predictions.
DEMO_RESULTS_FILE = "demo_results.json"
CATEGORIES = [{"id": 1, "name": "object"}]
# CutLER get_self_training_ann.py: an old pseudo-mask survives when its IoU with every kept
# prediction is below this.
PREVIOUS_MASK_IOU = 0.5

# Predefined self-training splits: name -> (image folder, JSON), relative to $DETECTRON2_DATASETS.
SELF_TRAINING_SPLITS = {
    # CuVLER: zero-shot model's predictions on COCO train2017, threshold 0.2.
    "coco_train_17_self_training": ("coco/train2017", "coco/annotations/coco_cls_agnostic_instances_train2017_thresh0.2.json"),
    # CutLER rounds 1 and 2 on ImageNet train (thresholds 0.7 and 0.65, keep_previous).
    "imagenet_train_r1": ("imagenet/train", "imagenet/annotations/cutler_imagenet1k_train_r1.json"),
    "imagenet_train_r2": ("imagenet/train", "imagenet/annotations/cutler_imagenet1k_train_r2.json"),
    # CPU demo: the synthetic cascade's predictions on synthetic_shapes_train, threshold 0.5.
    "synthetic_shapes_train_self_training": (
        "synthetic/shapes_train", "synthetic/annotations/shapes_train_self_training_thresh0.5.json",
    ),
}


class SelfTrainingError(UserError, ValueError):
    """Predictions or annotation file that cannot be turned into a self-training JSON."""


def find_predictions(detectron2_out_dir: Path) -> Path:
    """The predictions file of an `--eval-only` run: `D/coco_instances_results.json` or the single
    `D/inference/<split>/coco_instances_results.json`; of a demo run: `D/demo_results.json`; or D
    itself when it is a JSON file."""
    d = Path(detectron2_out_dir)
    if d.is_file():
        return d
    for name in (RESULTS_FILE, DEMO_RESULTS_FILE):
        if (d / name).is_file():
            return d / name
    found = sorted((d / "inference").glob(f"*/{RESULTS_FILE}"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise SelfTrainingError(f"no {RESULTS_FILE} in {d} or {d}/inference/<split>/, no {DEMO_RESULTS_FILE} in {d} "
                                "(run train_net.py --eval-only or tools/demo.py first)")
    raise SelfTrainingError(
        f"several splits' predictions under {d}/inference ({', '.join(p.parent.name for p in found)}): "
        "pass the split's folder as --detectron2-out-dir"
    )


def _to_rle(segmentation, height: int, width: int) -> Dict:
    """Compressed RLE (counts as str) of a COCO segmentation (polygons, RLE or uncompressed RLE)."""
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def prediction_annotations(
    predictions: Iterable[Dict], images: Dict[int, Dict], threshold: float, min_box_size: float = 1.0
) -> List[Dict]:
    """Pseudo-label annotations (without ids) from COCO-format predictions.

    Keeps predictions with `score >= threshold` on known images; drops boxes narrower or lower
    than `min_box_size` pixels and empty masks. Raises `SelfTrainingError` when a mask's size is
    not the (height, width) its image has in `images` (predictions made on another split).
    """
    out = []
    for p in predictions:
        if p["score"] < threshold or p["image_id"] not in images:
            continue
        x, y, w, h = (float(v) for v in p["bbox"])
        if w < min_box_size or h < min_box_size:
            continue
        image = images[p["image_id"]]
        ann = {"image_id": p["image_id"], "category_id": 1, "bbox": [x, y, w, h], "iscrowd": 0, "score": float(p["score"])}
        if "segmentation" in p:
            rle = _to_rle(p["segmentation"], image["height"], image["width"])
            if list(rle["size"]) != [image["height"], image["width"]]:
                raise SelfTrainingError(
                    f"mask of image {p['image_id']} is {rle['size'][1]}x{rle['size'][0]} (w x h) but the annotation "
                    f"file (or folder) says {image['width']}x{image['height']}: predictions and images disagree"
                )
            area = float(mask_util.area(rle))
            if area == 0:
                continue
            ann.update(segmentation=rle, area=area)
        else:
            ann["area"] = w * h
        out.append(ann)
    return out


def surviving_previous(previous: List[Dict], new: List[Dict], image: Dict, iou_thresh: float = PREVIOUS_MASK_IOU) -> List[Dict]:
    """Previous pseudo-masks of one image whose mask IoU with every new one is < `iou_thresh`."""
    if not previous or not new:
        return list(previous)
    h, w = image["height"], image["width"]
    old_rles = [_to_rle(a["segmentation"], h, w) for a in previous]
    new_rles = [a["segmentation"] for a in new]
    ious = np.asarray(mask_util.iou(old_rles, new_rles, [0] * len(new_rles))).reshape(len(old_rles), len(new_rles))
    return [dict(a, segmentation=r) for a, r, m in zip(previous, old_rles, ious.max(axis=1)) if m < iou_thresh]


def _read_json(path: Path, what: str):
    """The parsed JSON file, or `SelfTrainingError` naming `what` and the file."""
    try:
        return read_json(path, what)
    except InputFileError as e:
        raise SelfTrainingError(str(e)) from e


def folder_images(image_dir: Path) -> List[Dict]:
    """COCO `images` entries of every image under `image_dir`: ids 1..N in sorted path order (as
    `images:DIR` and `tools/discover.py --images DIR` number them), `file_name` relative to the
    folder, and the width/height Detectron2 reads (EXIF orientation applied)."""
    try:
        records = list_image_dir(Path(image_dir))
    except NotADirectoryError:
        raise SelfTrainingError(f"image folder '{image_dir}' not found") from None
    images = []
    for r in tqdm(records, desc="image sizes", mininterval=5):
        try:
            height, width = image_size(r.path)
        except UNREADABLE_IMAGE_ERRORS as e:
            raise SelfTrainingError(f"cannot read image '{r.path}': {e}") from None
        images.append(image_entry(r.image_id, r.file_name, height, width))
    if not images:
        raise SelfTrainingError(f"no images in '{image_dir}'")
    return images


def build_self_training_json(
    predictions_file: Path, coco_ann_file: Optional[Path], threshold: float,
    keep_previous: bool = False, min_box_size: float = 1.0, image_dir: Optional[Path] = None,
) -> Dict:
    """The class-agnostic training JSON (dict) from predictions and either the split's annotation
    file (`images` and `licenses` are copied from it; with `keep_previous`, its annotations are
    merged as in CutLER), or, for an `images:DIR` split, its folder `image_dir` (`folder_images`),
    or, for predictions given as a COCO JSON (the demo's), that JSON's own `images`."""
    if coco_ann_file is not None and image_dir is not None:
        raise SelfTrainingError("give either the COCO annotation file or the image folder of the predicted split, not both")
    if keep_previous and coco_ann_file is None:
        raise SelfTrainingError("keeping the previous masks needs their COCO annotation file, not an image folder")
    predictions = _read_json(Path(predictions_file), "predictions")
    if isinstance(predictions, dict) and {"images", "annotations"} <= set(predictions):
        own_images, predictions = {"images": predictions["images"]}, predictions["annotations"]
    elif isinstance(predictions, list):
        own_images = None
    else:
        raise SelfTrainingError(f"{predictions_file} is neither a COCO results list nor a COCO JSON with 'images' and 'annotations'")
    if coco_ann_file:
        coco = _read_json(Path(coco_ann_file), "--coco-ann-path")
    elif image_dir:
        coco = {"images": folder_images(image_dir)}
    elif own_images:
        coco = own_images
    else:
        raise SelfTrainingError(f"{predictions_file} is a results list without image entries: give the COCO annotation "
                                "file (--coco-ann-path) or the image folder (--images) of the predicted split")
    if not isinstance(coco, dict) or "images" not in coco:
        raise SelfTrainingError(f"{coco_ann_file} must be a COCO JSON with 'images'")
    images = {im["id"]: im for im in coco["images"]}
    kept = prediction_annotations(tqdm(predictions, desc="predictions", mininterval=5), images, threshold, min_box_size)
    if keep_previous:
        by_image: Dict[int, List[Dict]] = {}
        for a in kept:
            by_image.setdefault(a["image_id"], []).append(a)
        old_by_image: Dict[int, List[Dict]] = {}
        for a in coco.get("annotations", []):
            if a.get("iscrowd", 0) == 0 and "segmentation" in a and a["image_id"] in images:
                old_by_image.setdefault(a["image_id"], []).append(a)
        for image_id, old in tqdm(old_by_image.items(), desc="merge previous", mininterval=5):
            for a in surviving_previous(old, by_image.get(image_id, []), images[image_id]):
                kept.append({**a, "category_id": 1, "iscrowd": 0})
    annotations = [{**a, "id": i + 1} for i, a in enumerate(kept)]
    logger.info("%d pseudo-labels on %d images (score >= %g)", len(annotations), len({a["image_id"] for a in annotations}), threshold)
    out = {"images": coco["images"], "annotations": annotations, "categories": CATEGORIES}
    if "licenses" in coco:
        out["licenses"] = coco["licenses"]
    return out


def self_training_path(prefix: str, threshold: float) -> Path:
    """`<prefix>_thresh<T>.json` (CuVLER's naming, e.g. `..._train2017_thresh0.2.json`)."""
    return Path(f"{prefix}_thresh{threshold:g}.json")


def write_self_training_json(
    detectron2_out_dir: Path, coco_ann_file: Optional[Path], save_path_prefix: str, threshold: float,
    keep_previous: bool = False, min_box_size: float = 1.0, image_dir: Optional[Path] = None,
) -> Path:
    """Find the predictions, build the JSON and write it atomically; returns its path."""
    if not 0.0 <= threshold <= 1.0:
        raise SelfTrainingError(f"--threshold {threshold}: a score threshold lies in [0, 1]")
    data = build_self_training_json(
        find_predictions(detectron2_out_dir), coco_ann_file, threshold, keep_previous, min_box_size, image_dir
    )
    path = self_training_path(save_path_prefix, threshold)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
    return path


def register_self_training_split(name: str, json_file: Path, image_root: Path, section: str = "Self-training") -> None:
    """Register a self-training JSON as a class-agnostic split (its `score`s are the soft targets)."""
    register_class_agnostic_coco(name, Path(json_file), Path(image_root), section)


def register_self_training_splits(root: Path, names: Optional[Iterable[str]] = None) -> None:
    """Register the predefined self-training splits under dataset `root` (no disk access)."""
    for name in names or SELF_TRAINING_SPLITS:
        images, ann = SELF_TRAINING_SPLITS[name]
        register_self_training_split(name, Path(root) / ann, Path(root) / images)
