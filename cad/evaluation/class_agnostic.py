"""Class-agnostic COCO evaluation: every category is one "object" class.

Detectron2's `COCOEvaluator` (pycocotools COCOeval) on splits registered with a single class
(`cad.data.coco.CLASS_AGNOSTIC_METADATA`); adds average recall AR@{1,10,maxDets} to the
reported AP/AP50/AP75/APs/APm/APl, for boxes and masks.
"""
import logging
from typing import Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator

logger = logging.getLogger(__name__)


class ClassAgnosticCOCOEvaluator(COCOEvaluator):
    """COCO AP/AR with one foreground class.

    Args:
        dataset_name: a split registered class-agnostically (metadata `thing_classes == ["object"]`).
        output_dir: where `coco_instances_results.json` and the GT cache go.
        max_dets: COCOeval maxDets is `[1, 10, max_dets]` (100 for COCO, 300 for LVIS-style).
        tasks: ("bbox",), ("bbox", "segm") or None to infer from the predictions.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        max_dets: int = 100,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
    ):
        classes = MetadataCatalog.get(dataset_name).get("thing_classes")
        if classes is None or len(classes) != 1:
            raise ValueError(
                f"dataset '{dataset_name}' is not class-agnostic (thing_classes={classes}); "
                "register it with cad.data.coco.CLASS_AGNOSTIC_METADATA"
            )
        super().__init__(
            dataset_name,
            tasks=tuple(tasks) if tasks else None,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets,
            use_fast_impl=False,
        )

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=None)
        max_dets = self._max_dets_per_image
        for i, k in enumerate(max_dets):
            # COCOeval.stats[6:9] are AR at maxDets[0..2], all areas, IoU .50:.95.
            value = coco_eval.stats[6 + i] * 100 if coco_eval is not None and coco_eval.stats[6 + i] >= 0 else float("nan")
            results[f"AR@{k}"] = float(value)
        return results
