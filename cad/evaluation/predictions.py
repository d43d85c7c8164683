"""An evaluator that only writes predictions: splits without ground truth (`images:DIR`)."""
import itertools
import logging
import os
from typing import Dict, List, Optional

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm

from cad.data.self_training import RESULTS_FILE
from cad.utils.io import atomic_write_json

logger = logging.getLogger(__name__)


class PredictionWriter(DatasetEvaluator):
    """Writes `<output_dir>/coco_instances_results.json` (the file Detectron2's COCOEvaluator writes:
    image_id, category_id as the split's dataset id, bbox XYWH in original pixels, score, and
    compressed RLE `segmentation` for masks) and returns no metrics.

    Args:
        dataset_name: the split (its `thing_dataset_id_to_contiguous_id` maps classes back to ids).
        output_dir: folder of the results file.
    """

    def __init__(self, dataset_name: str, output_dir: str) -> None:
        id_map = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id", {})
        self._reverse_ids = {v: k for k, v in id_map.items()}
        self.path = os.path.join(output_dir, RESULTS_FILE)
        self.reset()

    def reset(self) -> None:
        self._results: List[Dict] = []

    def category_id(self, contiguous: int) -> int:
        """The `category_id` written for the model's class index `contiguous`."""
        return self._reverse_ids.get(contiguous, contiguous)

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            for r in instances_to_coco_json(out["instances"].to("cpu"), inp["image_id"]):
                r["category_id"] = self.category_id(r["category_id"])
                self._results.append(r)

    def write_results(self) -> Optional[List[Dict]]:
        """Gather every process's results; on the main process write the file and return them
        (None on the others)."""
        gathered = comm.gather(self._results, dst=0)
        if not comm.is_main_process():
            return None
        results = list(itertools.chain.from_iterable(gathered))
        atomic_write_json(self.path, results)
        return results

    def evaluate(self) -> Dict:
        results = self.write_results()
        if results is not None:
            logger.info("Wrote %d predictions on %d images to %s (no ground truth: no metrics)",
                        len(results), len({r["image_id"] for r in results}), self.path)
        return {}
