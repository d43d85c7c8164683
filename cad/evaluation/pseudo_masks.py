"""Class-agnostic quality of pseudo-labels (a COCO JSON) against ground truth, with pycocotools.

Every category of both files becomes one "object" class; COCOeval with maxDets (1, 10, 100)
gives AP, AP50, AP75, APs, APm, APl and AR@{1,10,100}, in percent.
"""
import contextlib
import copy
import io
import logging
from pathlib import PurePosixPath
from typing import Dict, List, Mapping, Sequence, Union

import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _gt_coco(gt: Mapping) -> COCO:
    dataset = copy.deepcopy(dict(gt))
    dataset["categories"] = [{"id": 1, "name": "object"}]
    for ann in dataset.get("annotations", []):
        ann["category_id"] = 1
        ann.setdefault("iscrowd", 0)
        if "area" not in ann and "segmentation" in ann:
            ann["area"] = float(mask_util.area(_rle(ann["segmentation"], _image_size(dataset, ann["image_id"]))))
        elif "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _image_size(dataset: Mapping, image_id) -> Sequence[int]:
    im = next(im for im in dataset["images"] if im["id"] == image_id)
    return im["height"], im["width"]


def _rle(segmentation, hw: Sequence[int]) -> Dict:
    """Compressed RLE of a COCO segmentation (polygons, uncompressed or compressed RLE)."""
    h, w = hw
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, h, w))
    if isinstance(segmentation["counts"], list):
        return mask_util.frPyObjects(segmentation, h, w)
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def match_image_ids(gt: Mapping, pred_images: Sequence[Mapping]) -> Dict:
    """pred image id -> GT image id, by file name (exact, else a unique base name)."""
    exact = {im["file_name"]: im["id"] for im in gt["images"]}
    by_base: Dict[str, List] = {}
    for im in gt["images"]:
        by_base.setdefault(PurePosixPath(im["file_name"]).name, []).append(im["id"])
    mapping = {}
    for im in pred_images:
        name = im["file_name"]
        if name in exact:
            mapping[im["id"]] = exact[name]
        elif len(by_base.get(PurePosixPath(name).name, [])) == 1:
            mapping[im["id"]] = by_base[PurePosixPath(name).name][0]
        else:
            raise ValueError(f"prediction image '{name}' is not (uniquely) in the ground truth")
    return mapping


def _predictions(gt: Mapping, pred: Union[Mapping, Sequence[Mapping]], iou_type: str) -> List[Dict]:
    if isinstance(pred, Mapping):
        anns = pred.get("annotations", [])
        ids = match_image_ids(gt, pred["images"]) if "images" in pred else None
    else:
        anns, ids = pred, None
    gt_ids = {im["id"] for im in gt["images"]}
    out = []
    for ann in anns:
        image_id = ids[ann["image_id"]] if ids is not None else ann["image_id"]
        if image_id not in gt_ids:
            raise ValueError(f"prediction for image id {image_id}, which is not in the ground truth")
        if iou_type == "segm" and "segmentation" not in ann:
            raise ValueError("predictions have no 'segmentation'; evaluate them with iou_type 'bbox'")
        p = {k: v for k, v in ann.items() if k not in ("id", "area")}
        p.update(image_id=image_id, category_id=1, score=float(ann.get("score", 1.0)))
        out.append(p)
    return out


def evaluate_pseudo_masks(
    gt: Mapping, pred: Union[Mapping, Sequence[Mapping]], iou_type: str = "segm", max_dets: Sequence[int] = (1, 10, 100)
) -> Dict[str, float]:
    """Class-agnostic COCO metrics of `pred` against `gt` (both COCO dicts), in percent.

    Args:
        gt: COCO dict with `images` and `annotations` (any categories; all become one class).
        pred: a COCO dict (its images are matched to `gt`'s by file name) or a list of
            results (image_id, bbox, score, segmentation); `score` defaults to 1.
        iou_type: "segm" (masks) or "bbox".
        max_dets: COCOeval maxDets (three values); AR is reported at each.
    Returns: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR@1", "AR@10", "AR@100"}; a metric
        COCOeval cannot compute (e.g. no ground truth of that size) is NaN; no predictions give 0.
    """
    if len(max_dets) != 3:
        raise ValueError(f"max_dets needs three values (got {list(max_dets)})")
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox' (got '{iou_type}')")
    coco_gt = _gt_coco(gt)
    preds = _predictions(gt, pred, iou_type)
    names = list(METRICS) + [f"AR@{k}" for k in max_dets]
    if not preds:
        return {name: 0.0 for name in names}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.info("COCOeval (%s, class-agnostic):\n%s", iou_type, log.getvalue())
    stats = evaluator.stats
    values = list(stats[:6]) + list(stats[6 : 6 + len(max_dets)])
    return {name: float(v * 100) if v >= 0 else float("nan") for name, v in zip(names, values)}
