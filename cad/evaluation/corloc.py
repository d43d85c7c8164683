"""CorLoc: the fraction of images whose top box has IoU >= 0.5 with some ground-truth box.

As in LOST's evaluation (`main_lost.py`): IoU on continuous [x0, y0, x1, y1] coordinates (no +1),
every ground-truth box of the image counts (VOC "difficult" ones included), COCO `iscrowd` boxes
are left out, COCO20k ground-truth boxes are rounded to integers (metadata `corloc_round_gt`), and
an image without ground truth or without a prediction counts as a miss. The denominator is the
number of evaluated images.

`corloc()` is the one implementation; `tools/discover.py lost` (through `dataset_corloc`) and the
registered `corloc` evaluator (top-scoring detection of a trained detector: LOST+CAD) call it.
"""
import itertools
import logging
from collections import OrderedDict
from typing import Dict, Hashable, Mapping, Optional, Sequence, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

from cad.evaluation.build import EVALUATOR_REGISTRY

logger = logging.getLogger(__name__)

__all__ = ["CORLOC_IOU", "box_iou", "corloc", "corloc_hits", "dataset_gt_boxes", "dataset_corloc", "CorLocEvaluator"]

# LOST: an image is correctly localised when IoU >= 0.5 (inclusive) with any ground-truth box.
CORLOC_IOU = 0.5

BoxesPerImage = Union[Mapping[Hashable, np.ndarray], Sequence[np.ndarray]]


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) [x0, y0, x1, y1] boxes (continuous coordinates) -> (n, m)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _top_box(boxes: Optional[np.ndarray], scores: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The box to evaluate: the highest-scoring row (first on ties), or row 0 without scores."""
    if boxes is None:
        return None
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    index = 0 if scores is None else int(np.argmax(np.asarray(scores).reshape(-1)))
    return boxes[index : index + 1]


def corloc_hits(
    pred_boxes_per_image: BoxesPerImage,
    gt_boxes_per_image: BoxesPerImage,
    pred_scores_per_image: Optional[BoxesPerImage] = None,
    iou_threshold: float = CORLOC_IOU,
) -> Dict[Hashable, bool]:
    """Per ground-truth image: is its top predicted box within `iou_threshold` IoU of a GT box?

    Boxes are [x0, y0, x1, y1] arrays, (4,) or (n, 4) per image, keyed like the ground truth
    (a mapping image id -> boxes, or sequences aligned by position). Without scores the first row
    of each prediction is its top box. Images missing from the predictions count as misses.
    """

    def as_mapping(per_image):
        if per_image is None:
            return {}
        return per_image if isinstance(per_image, Mapping) else dict(enumerate(per_image))

    preds, gts, scores = as_mapping(pred_boxes_per_image), as_mapping(gt_boxes_per_image), as_mapping(pred_scores_per_image)
    hits = {}
    for image_id, gt in gts.items():
        top = _top_box(preds.get(image_id), scores.get(image_id))
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        hits[image_id] = bool(top is not None and len(gt) and (box_iou(top, gt) >= iou_threshold).any())
    return hits


def corloc(
    pred_boxes_per_image: BoxesPerImage,
    gt_boxes_per_image: BoxesPerImage,
    pred_scores_per_image: Optional[BoxesPerImage] = None,
    iou_threshold: float = CORLOC_IOU,
) -> float:
    """CorLoc in [0, 1] over the images of `gt_boxes_per_image` (see `corloc_hits`)."""
    hits = corloc_hits(pred_boxes_per_image, gt_boxes_per_image, pred_scores_per_image, iou_threshold)
    if not hits:
        raise ValueError("CorLoc needs at least one ground-truth image")
    return float(np.mean(list(hits.values())))


def _is_hard(ann: Dict) -> bool:
    """LOST's `--no_hard` (the VOC_all setup): truncated or difficult VOC objects."""
    return bool(ann.get("truncated", 0) or ann.get("difficult", 0))


def gt_boxes_of_record(record: Dict, round_to_int: bool = False, no_hard: bool = False) -> np.ndarray:
    """(n, 4) XYXY ground-truth boxes of a Detectron2 dataset dict, `iscrowd` ones left out (and,
    with `no_hard`, truncated or difficult ones)."""
    boxes = [
        BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
        for ann in record.get("annotations", [])
        if not ann.get("iscrowd", 0) and not (no_hard and _is_hard(ann))
    ]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    # LOST's COCO ground truth: [x, y, x + w, y + h] rounded with Python's round (half to even).
    return np.round(boxes) if round_to_int else boxes


def dataset_gt_boxes(dataset_name: str, no_hard: bool = False) -> Dict[Hashable, np.ndarray]:
    """image_id -> (n, 4) XYXY ground-truth boxes of a registered split, for CorLoc.

    `no_hard` (LOST's VOC_all setup, main_lost.py --no_hard): truncated and difficult boxes are
    left out, and so are the images left without any box (they are not evaluated)."""
    round_to_int = bool(MetadataCatalog.get(dataset_name).get("corloc_round_gt", False))
    gt = {r["image_id"]: gt_boxes_of_record(r, round_to_int, no_hard) for r in DatasetCatalog.get(dataset_name)}
    return {k: v for k, v in gt.items() if len(v)} if no_hard else gt


def dataset_corloc(
    dataset_name: str, pred_boxes_per_image: Mapping, pred_scores_per_image: Optional[Mapping] = None, no_hard: bool = False
) -> float:
    """CorLoc of predictions (image_id -> boxes) on every image of a registered split."""
    return corloc(pred_boxes_per_image, dataset_gt_boxes(dataset_name, no_hard), pred_scores_per_image)


class CorLocEvaluator(DatasetEvaluator):
    """CorLoc of a detector's top-scoring box per image (LOST+CAD), on the images it was run on."""

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, no_hard: bool = False) -> None:
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.no_hard = no_hard
        self._gt: Optional[Dict[Hashable, np.ndarray]] = None
        self.reset()

    def reset(self) -> None:
        self._predictions: Dict[Hashable, np.ndarray] = {}

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            top = np.zeros((0, 4))
            if len(instances):
                best = int(instances.scores.argmax())
                top = instances.pred_boxes.tensor[best : best + 1].numpy()
            self._predictions[inp["image_id"]] = top

    def evaluate(self):
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return {}
        predictions = dict(itertools.chain.from_iterable(p.items() for p in gathered))
        if self._gt is None:
            self._gt = dataset_gt_boxes(self.dataset_name, self.no_hard)
        gt = {image_id: self._gt[image_id] for image_id in predictions if image_id in self._gt}
        if not gt:
            logger.warning("CorLoc on '%s': no predictions", self.dataset_name)
            return {}
        hits = corloc_hits(predictions, gt)
        value = 100.0 * float(np.mean(list(hits.values())))
        logger.info("CorLoc on '%s': %.2f (%d/%d)", self.dataset_name, value, sum(hits.values()), len(hits))
        return OrderedDict(corloc={"CorLoc": value})


def _corloc_factory(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """`EVALUATOR_REGISTRY` factory of splits with `evaluator_type="corloc"` (CAD.LOST.NO_HARD: LOST's
    VOC_all setup)."""
    return CorLocEvaluator(dataset_name, output_dir, bool(cfg.CAD.LOST.NO_HARD))


# The registry keys factories by function name; `corloc` is taken by the pure function above.
_corloc_factory.__name__ = "corloc"
EVALUATOR_REGISTRY.register(_corloc_factory)
