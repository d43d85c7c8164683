"""Class-aware detection without labels (LOST+OD): VOC AP after a Hungarian matching of the
detector's clusters to the ground-truth classes.

As valeoai/LOST `tools/evaluate_unsupervised_detection_voc.py`:

- detections: COCO results (`bbox` [x, y, w, h]) converted to [x0, y0, x1, y1] with `x0 += 1`,
  `y0 += 1` (back to VOC's 1-based pixel indices; x1/y1 kept), grouped by cluster (`category_id`)
  and sorted by decreasing score (`np.argsort(-score)`, as the reference);
- ground truth: VOC boxes in the XML's 1-based integers (Detectron2's dicts shift xmin/ymin by −1:
  shifted back here), `difficult` objects ignored (neither matched nor counted);
- `voc_eval`: a detection takes the ground-truth box of its image and class with the largest IoU
  (areas with VOC's +1: (x1 − x0 + 1)(y1 − y0 + 1)); true positive when IoU > threshold (strict),
  the box is not difficult and not taken by a higher-scored detection; false positive otherwise,
  except on a difficult box (neither); AP = area under the precision envelope (not the VOC07
  11-point metric);
- reward[c, k] = AP50 of class c with the detections of cluster k; `linear_sum_assignment` on
  −reward gives the class -> cluster mapping; then AP per class with its cluster's detections at
  IoU 0.50, 0.55, ..., 0.95; AP (their mean), AP50, AP75 averaged over the classes, in percent.

Differences, where the reference fails: a cluster without any detection has AP 0 (the reference
counts clusters by the detections present and raises KeyError on a missing one); with fewer
clusters than classes (the reference asserts), the unmatched classes get AP 0; a class without
any non-difficult ground truth is left out with a warning (the reference divides by zero).

`evaluate_hungarian` is the one implementation; the registered `voc_hungarian` evaluator (splits
`voc07_test_lost_od`, ...) and `tools/eval_hungarian.py` (a predictions file alone) call it.
"""
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from scipy.optimize import linear_sum_assignment

from cad.evaluation.build import EVALUATOR_REGISTRY
from cad.evaluation.predictions import PredictionWriter
from cad.evaluation.prediction_files import image_index
from cad.utils.io import atomic_write_json

# under Detectron2's logger, so that tools/train_net.py --eval-only prints the table and the mapping
logger = logging.getLogger("detectron2.cad.hungarian")

__all__ = [
    "IOU_THRESHOLDS", "VOCGroundTruth", "VOCDetections", "voc_ap", "best_overlaps", "voc_average_precision",
    "hungarian_match", "HungarianResult", "evaluate_hungarian", "gt_from_dataset_dicts", "gt_from_coco",
    "detections_from_results", "HungarianVOCEvaluator", "MATCHING_FILE",
]

# IoU thresholds of the reference: range(50, 100, 5) / 100.
IOU_THRESHOLDS = tuple(t / 100.0 for t in range(50, 100, 5))
# Written next to the results: mapping, reward matrix and per-class APs.
MATCHING_FILE = "hungarian_matching.json"


@dataclass
class VOCGroundTruth:
    """Ground truth of `num_images` images as flat arrays over the n boxes: `image` (n,) image
    index, `label` (n,) class index, `boxes` (n, 4) [x0, y0, x1, y1] in VOC's 1-based convention,
    `difficult` (n,) bool. `image_keys` (num_images,) are the images' ids, `class_names` (C,)."""

    image_keys: List[Hashable]
    class_names: List[str]
    image: np.ndarray
    label: np.ndarray
    boxes: np.ndarray
    difficult: np.ndarray


@dataclass
class VOCDetections:
    """Detections as flat arrays: `image` (n,) image index, `cluster` (n,) cluster id, `score`
    (n,), `boxes` (n, 4) [x0, y0, x1, y1] in VOC's convention (x0, y0 already + 1)."""

    image: np.ndarray
    cluster: np.ndarray
    score: np.ndarray
    boxes: np.ndarray


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC AP (area-based, the reference's `voc_ap(use_07_metric=False)`) of a PR curve."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _pad_by_image(num_images: int, image: np.ndarray, *arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Per-image padded copies (num_images, G, ...) of per-box arrays, G = most boxes of an image,
    and the (num_images, G) validity mask."""
    counts = np.bincount(image, minlength=num_images)
    width = max(int(counts.max(initial=0)), 1)
    order = np.argsort(image, kind="stable")
    slot = np.arange(len(image)) - np.repeat(np.cumsum(counts) - counts, counts)
    valid = np.zeros((num_images, width), bool)
    valid[image[order], slot] = True
    out = []
    for a in arrays:
        padded = np.zeros((num_images, width) + a.shape[1:], a.dtype)
        padded[image[order], slot] = a[order]
        out.append(padded)
    return (valid, *out)


def best_overlaps(
    det_image: np.ndarray, det_boxes: np.ndarray, gt_valid: np.ndarray, gt_boxes: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """(ovmax (n,), jmax (n,)): each detection's largest IoU with its image's ground-truth boxes
    (padded per image: gt_valid (I, G), gt_boxes (I, G, 4)) and that box's slot; −inf (and 0)
    where the image has none. IoU with VOC's +1 on widths and heights, as the reference."""
    g = gt_boxes[det_image]  # (n, G, 4)
    d = det_boxes[:, None, :]
    iw = np.maximum(np.minimum(g[..., 2], d[..., 2]) - np.maximum(g[..., 0], d[..., 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(g[..., 3], d[..., 3]) - np.maximum(g[..., 1], d[..., 1]) + 1.0, 0.0)
    inter = iw * ih
    union = (d[..., 2] - d[..., 0] + 1.0) * (d[..., 3] - d[..., 1] + 1.0) + (g[..., 2] - g[..., 0] + 1.0) * (g[..., 3] - g[..., 1] + 1.0) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        overlaps = np.where(gt_valid[det_image], inter / union, -np.inf)
    jmax = np.argmax(overlaps, axis=1)
    return overlaps[np.arange(len(det_image)), jmax], jmax


def voc_average_precision(
    ovmax: np.ndarray, jmax: np.ndarray, det_image: np.ndarray, gt_difficult: np.ndarray, npos: int, threshold: float
) -> float:
    """VOC AP of detections sorted by score, given their best overlaps (`best_overlaps`), the
    padded difficult flags (I, G) and the number of non-difficult ground-truth boxes.

    The reference's sequential loop, vectorised: a detection over `threshold` on a non-difficult
    box is a true positive when it is the first (highest-scored) one on that box."""
    hit = ovmax > threshold
    difficult = hit & gt_difficult[det_image, jmax]
    candidates = np.flatnonzero(hit & ~difficult)
    key = det_image[candidates].astype(np.int64) * gt_difficult.shape[1] + jmax[candidates]
    _, first = np.unique(key, return_index=True)
    tp = np.zeros(len(ovmax))
    tp[candidates[first]] = 1.0
    fp = (~difficult).astype(np.float64) - tp
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec)


def hungarian_match(reward: np.ndarray) -> Dict[int, Optional[int]]:
    """class index -> cluster column maximising the summed reward (`linear_sum_assignment` on
    −reward, as the reference); None for classes left without a cluster (fewer clusters)."""
    rows, cols = linear_sum_assignment(-np.asarray(reward))
    mapping: Dict[int, Optional[int]] = {c: None for c in range(reward.shape[0])}
    mapping.update({int(r): int(c) for r, c in zip(rows, cols)})
    return mapping


@dataclass
class HungarianResult:
    """Matched evaluation: `aps` (T, C) AP per IoU threshold and class (0..1), `reward` (C, K)
    AP50 of every (class, cluster), `class_to_cluster` class name -> cluster id (None when
    unmatched), `class_names`, `clusters` (K,) cluster ids in reward column order."""

    aps: np.ndarray
    reward: np.ndarray
    class_to_cluster: Dict[str, Optional[Hashable]]
    class_names: List[str]
    clusters: List[Hashable]

    def metrics(self) -> "OrderedDict[str, float]":
        """AP (IoU .50:.95), AP50, AP75 averaged over classes, then AP-<class>, in percent."""
        out = OrderedDict()
        out["AP"] = 100.0 * float(self.aps.mean())
        out["AP50"] = 100.0 * float(self.aps[IOU_THRESHOLDS.index(0.5)].mean())
        out["AP75"] = 100.0 * float(self.aps[IOU_THRESHOLDS.index(0.75)].mean())
        for c, name in enumerate(self.class_names):
            out[f"AP-{name}"] = 100.0 * float(self.aps[:, c].mean())
        return out

    def table(self) -> str:
        """The reference's per-class printout (AP50 | AP | AP75) and the mean."""
        i50, i75 = IOU_THRESHOLDS.index(0.5), IOU_THRESHOLDS.index(0.75)
        lines = [
            f"{name:20}: [AP50: {100 * self.aps[i50, c]:10.3f} | AP: {100 * self.aps[:, c].mean():10.3f} | "
            f"AP75: {100 * self.aps[i75, c]:10.3f} ] <- cluster {self.class_to_cluster[name]}"
            for c, name in enumerate(self.class_names)
        ]
        m = self.metrics()
        lines.append(f"{'mean':20}: [AP50: {m['AP50']:10.3f} | AP: {m['AP']:10.3f} | AP75: {m['AP75']:10.3f} ]")
        return "\n".join(lines)

    def to_json(self) -> Dict:
        return {
            "metrics": dict(self.metrics()),
            "class_to_cluster": self.class_to_cluster,
            "clusters": list(self.clusters),
            "class_names": list(self.class_names),
            "reward_ap50": self.reward.tolist(),
            "ap_per_threshold": {f"{t:.2f}": row.tolist() for t, row in zip(IOU_THRESHOLDS, self.aps)},
        }


def evaluate_hungarian(
    gt: VOCGroundTruth, dets: VOCDetections, clusters: Optional[Sequence[Hashable]] = None
) -> HungarianResult:
    """Hungarian-matched VOC evaluation (module docstring). `clusters`: every cluster id the
    detector has (default: those with detections); a cluster without detections scores 0."""
    clusters = sorted(set(dets.cluster.tolist()) | set(clusters or ()), key=lambda c: (str(type(c)), c))
    if not clusters:
        raise ValueError("no detections and no clusters to evaluate")
    num_images = len(gt.image_keys)
    classes = []
    for c, name in enumerate(gt.class_names):
        if np.sum((gt.label == c) & ~gt.difficult) == 0:
            logger.warning("Class '%s' has no (non-difficult) ground truth: left out of the evaluation", name)
        else:
            classes.append(c)
    per_class = {}
    for c in classes:
        sel = gt.label == c
        per_class[c] = _pad_by_image(num_images, gt.image[sel], gt.boxes[sel], gt.difficult[sel]) + (int(np.sum(sel & ~gt.difficult)),)
    per_cluster = []
    for k in clusters:
        sel = np.flatnonzero(dets.cluster == k)
        sel = sel[np.argsort(-dets.score[sel])]  # the reference's (unstable) sort by confidence
        per_cluster.append((dets.image[sel], dets.boxes[sel]))

    def overlaps(c, k):
        valid, boxes, _, _ = per_class[c]
        return best_overlaps(per_cluster[k][0], per_cluster[k][1], valid, boxes)

    reward = np.zeros((len(classes), len(clusters)))
    cache = {}
    for i, c in enumerate(classes):
        _, _, difficult, npos = per_class[c]
        for k in range(len(clusters)):
            cache[i, k] = overlaps(c, k)
            reward[i, k] = voc_average_precision(*cache[i, k], per_cluster[k][0], difficult, npos, 0.5)
    mapping = hungarian_match(reward)
    aps = np.zeros((len(IOU_THRESHOLDS), len(classes)))
    for i, c in enumerate(classes):
        k = mapping[i]
        if k is None:
            continue
        _, _, difficult, npos = per_class[c]
        for t, threshold in enumerate(IOU_THRESHOLDS):
            aps[t, i] = voc_average_precision(*cache[i, k], per_cluster[k][0], difficult, npos, threshold)
    names = [gt.class_names[c] for c in classes]
    class_to_cluster = {name: (None if mapping[i] is None else clusters[mapping[i]]) for i, name in enumerate(names)}
    return HungarianResult(aps, reward, class_to_cluster, names, clusters)


def _voc_xyxy(bbox: Sequence[float], mode) -> List[float]:
    """Absolute box -> [x0 + 1, y0 + 1, x1, y1] (VOC's 1-based indices, as the reference)."""
    x0, y0, x1, y1 = BoxMode.convert(list(bbox), mode, BoxMode.XYXY_ABS)
    return [x0 + 1.0, y0 + 1.0, x1, y1]


def _gt_arrays(image_keys, class_names, rows) -> VOCGroundTruth:
    """rows: (image index, label, [x0, y0, x1, y1] VOC, difficult)."""
    image = np.array([r[0] for r in rows], dtype=np.int64)
    label = np.array([r[1] for r in rows], dtype=np.int64)
    boxes = np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4)
    difficult = np.array([bool(r[3]) for r in rows], dtype=bool)
    return VOCGroundTruth(list(image_keys), list(class_names), image, label, boxes, difficult)


def gt_from_dataset_dicts(dicts: Sequence[Mapping], class_names: Sequence[str]) -> VOCGroundTruth:
    """Ground truth of Detectron2 dataset dicts (`category_id` contiguous); an annotation is
    difficult when its `difficult` flag (VOC XML) or `iscrowd` is set."""
    rows = [
        (i, ann["category_id"], _voc_xyxy(ann["bbox"], ann["bbox_mode"]), ann.get("difficult", 0) or ann.get("iscrowd", 0))
        for i, d in enumerate(dicts)
        for ann in d.get("annotations", [])
    ]
    return _gt_arrays([d["image_id"] for d in dicts], class_names, rows)


def gt_from_coco(coco: Mapping) -> VOCGroundTruth:
    """Ground truth of a COCO dict: classes in `categories` order of id, difficult = `difficult`
    or `iscrowd`."""
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    images = {im["id"]: i for i, im in enumerate(coco["images"])}
    rows = [
        (images[a["image_id"]], index[a["category_id"]], _voc_xyxy(a["bbox"], BoxMode.XYWH_ABS), a.get("difficult", 0) or a.get("iscrowd", 0))
        for a in coco["annotations"]
    ]
    return _gt_arrays(list(images), [c["name"] for c in categories], rows)


def detections_from_results(results: Sequence[Mapping], image_keys: Sequence[Hashable]) -> VOCDetections:
    """COCO results (image_id, category_id = cluster, bbox [x, y, w, h], score) on the images
    `image_keys`; raises ValueError when a result's image is not among them."""
    index = image_index(image_keys)
    missing = [r["image_id"] for r in results if r["image_id"] not in index]
    if missing:
        raise ValueError(f"{len(missing)} detections are on images that are not in the ground truth (first: {missing[0]!r})")
    # BoxMode.convert XYWH -> XYXY (in float32, as Detectron2 converts a list), then the reference's
    # +1 on x0 and y0 (VOC's 1-based pixel indices) in float64
    xywh = np.array([r["bbox"] for r in results], dtype=np.float32).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float64)
    boxes[:, :2] += 1.0
    return VOCDetections(
        image=np.array([index[r["image_id"]] for r in results], dtype=np.int64),
        cluster=np.array([r["category_id"] for r in results]),
        score=np.array([r["score"] for r in results], dtype=np.float64),
        boxes=boxes,
    )


def dataset_gt(dataset_name: str) -> VOCGroundTruth:
    """Ground truth of a registered split with `thing_classes` (e.g. `voc07_test_lost_od`)."""
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if not classes:
        raise ValueError(f"dataset '{dataset_name}' has no thing_classes: the Hungarian evaluation needs ground-truth classes")
    return gt_from_dataset_dicts(DatasetCatalog.get(dataset_name), classes)


class HungarianVOCEvaluator(PredictionWriter):
    """Hungarian-matched VOC AP of a class-aware detector trained on pseudo-classes (LOST+OD).

    Writes `coco_instances_results.json` (category_id = the model's class index + 1, i.e. the
    cluster id of tools/cluster_pseudo_labels.py's JSON) and `hungarian_matching.json` to
    `output_dir`, logs the per-class table and the class -> cluster mapping, and returns
    {"hungarian": {"AP", "AP50", "AP75", "AP-<class>", ...}}.
    """

    def __init__(self, dataset_name: str, output_dir: str, num_clusters: int) -> None:
        super().__init__(dataset_name, output_dir)
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.clusters = list(range(1, num_clusters + 1))

    def category_id(self, contiguous: int) -> int:
        return contiguous + 1

    def evaluate(self):
        results = self.write_results()
        if results is None:
            return {}
        gt = dataset_gt(self.dataset_name)
        result = evaluate_hungarian(gt, detections_from_results(results, gt.image_keys), self.clusters)
        logger.info("Hungarian-matched VOC evaluation on '%s' (%d detections):\n%s", self.dataset_name, len(results), result.table())
        logger.info("Class to cluster mapping: %s", json.dumps(result.class_to_cluster))
        atomic_write_json(os.path.join(self.output_dir, MATCHING_FILE), result.to_json())
        return OrderedDict(hungarian=result.metrics())


@EVALUATOR_REGISTRY.register()
def voc_hungarian(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """Hungarian-matched VOC AP (splits with evaluator_type "voc_hungarian"); the detector's
    MODEL.ROI_HEADS.NUM_CLASSES are the clusters."""
    return HungarianVOCEvaluator(dataset_name, output_dir, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
