"""Quality of pseudo-labels of a registered split against its ground truth (tools/discover.py --dataset)."""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict

from cad.discovery.sources import ImageRecord
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


def dataset_metrics(method: str, dataset: str, pred_json: Path, records: Sequence[ImageRecord]) -> List[str]:
    """Printable lines: class-agnostic box AP (and mask AP when the JSON has masks) of `pred_json`."""
    gt = dataset_ground_truth(dataset, records)
    if gt is None:
        return [f"{dataset} has no ground truth: no metrics"]
    pred = json.loads(Path(pred_json).read_text())
    has_masks = any("segmentation" in a for a in pred["annotations"])
    has_gt_masks = any("segmentation" in a for a in gt["annotations"])
    lines = []
    for iou_type in ("bbox", "segm") if has_masks and has_gt_masks else ("bbox",):
        metrics = evaluate_pseudo_masks(gt, pred, iou_type)
        lines.append(f"{method} on {dataset}, class-agnostic {iou_type}: " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return lines
