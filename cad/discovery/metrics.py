"""Quality of pseudo-labels of a registered split against its ground truth (tools/discover.py --dataset)."""
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from detectron2.data import DatasetCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict

from cad.discovery.sources import ImageRecord
from cad.evaluation.corloc import dataset_corloc
from cad.evaluation.pseudo_masks import evaluate_pseudo_masks


def dataset_ground_truth(dataset: str, records: Sequence[ImageRecord]) -> Optional[Dict]:
    """The split's ground truth as a COCO dict with the pipeline's image ids and file names.

    `records` are the split's images in its order (`cad.discovery.sources.list_dataset`).
    None when the split has no annotations.
    """
    if not any(d.get("annotations") for d in DatasetCatalog.get(dataset)):
        return None
    gt = convert_to_coco_dict(dataset)
    new_ids = {}
    for image, record in zip(gt["images"], records):
        new_ids[image["id"]] = record.image_id
        image.update(id=record.image_id, file_name=record.file_name)
    for ann in gt["annotations"]:
        ann["image_id"] = new_ids[ann["image_id"]]
    return gt


def pseudo_label_corloc(dataset: str, pred: Mapping, records: Sequence[ImageRecord], no_hard: bool = False) -> float:
    """CorLoc (`cad.evaluation.corloc`, top-scoring box per image) of a pseudo-label COCO dict.

    Every image of the split counts (with `no_hard`, those with a non-hard box); one without a box
    (e.g. unreadable) is a miss.
    """
    split_ids = {r.image_id: d["image_id"] for r, d in zip(records, DatasetCatalog.get(dataset))}
    boxes: Dict = {}
    scores: Dict = {}
    for ann in pred["annotations"]:
        x, y, w, h = ann["bbox"]
        key = split_ids[ann["image_id"]]
        boxes.setdefault(key, []).append([x, y, x + w, y + h])
        scores.setdefault(key, []).append(ann["score"])
    return dataset_corloc(
        dataset, {k: np.asarray(v) for k, v in boxes.items()}, {k: np.asarray(v) for k, v in scores.items()}, no_hard
    )


def dataset_metrics(
    method: str, dataset: str, pred_json: Path, records: Sequence[ImageRecord], no_hard: bool = False
) -> List[str]:
    """Printable lines: CorLoc for LOST, class-agnostic box AP (and mask AP when the JSON has masks)."""
    gt = dataset_ground_truth(dataset, records)
    if gt is None:
        return [f"{dataset} has no ground truth: no metrics"]
    pred = json.loads(Path(pred_json).read_text())
    lines = []
    if method == "lost":
        setup = " (no hard objects)" if no_hard else ""
        lines.append(f"lost on {dataset}{setup}: CorLoc={100 * pseudo_label_corloc(dataset, pred, records, no_hard):.2f}")
    has_masks = any("segmentation" in a for a in pred["annotations"])
    has_gt_masks = any("segmentation" in a for a in gt["annotations"])
    for iou_type in ("bbox", "segm") if has_masks and has_gt_masks else ("bbox",):
        metrics = evaluate_pseudo_masks(gt, pred, iou_type)
        lines.append(f"{method} on {dataset}, class-agnostic {iou_type}: " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return lines
