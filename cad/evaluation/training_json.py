"""Write a model's predictions on a split as a class-agnostic training JSON (pseudo-labels).

`TrainingJSONWriter` is a `DatasetEvaluator` that `build_evaluator` adds when
`CAD.EVAL_DUMP_TRAINING_JSON` is set, so `tools/train_net.py --eval-only` both evaluates a
pseudo-labeller (or detector) and writes its pseudo-labels for training. The JSON is the format of
tools/discover.py and tools/self_training_ann.py: `images` (id, file_name relative to the split's
image folder, width, height) in the split's order, `annotations` (id, image_id, category_id 1,
bbox, score, area, iscrowd 0, compressed RLE `segmentation` for masks) and
`categories` [{id: 1, name: "object"}]. Predictions become annotations with the self-training
code (`cad.data.self_training.prediction_annotations`) and the file is written atomically with
the discovery exporter (`cad.discovery.export.write_coco_json`).
"""
import itertools
import logging
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils import comm

from cad.data.self_training import prediction_annotations
from cad.discovery.export import image_entry, write_coco_json
from cad.discovery.sources import list_dataset

logger = logging.getLogger(__name__)


def training_json_path(template: str, dataset_name: str, output_dir: Optional[str]) -> str:
    """`template` with "{dataset}" replaced; a relative path is taken under `output_dir`."""
    path = template.replace("{dataset}", dataset_name)
    return path if os.path.isabs(path) or not output_dir else os.path.join(output_dir, path)


class TrainingJSONWriter(DatasetEvaluator):
    """Collects `instances` of every evaluated image and writes them as a training JSON.

    Args:
        dataset_name: the split the model runs on (gives image ids and file names).
        path: output JSON.
        score_thresh: predictions with a lower score are left out.
    """

    def __init__(self, dataset_name: str, path: str, score_thresh: float = 0.0) -> None:
        self.dataset_name = dataset_name
        self.path = path
        self.score_thresh = score_thresh
        self.reset()

    def reset(self) -> None:
        self._images: Dict = {}

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            height, width = instances.image_size
            self._images[inp["image_id"]] = (height, width, instances_to_coco_json(instances, inp["image_id"]))

    def evaluate(self) -> Dict:
        gathered = comm.gather(self._images, dst=0)
        if not comm.is_main_process():
            return {}
        done = dict(itertools.chain.from_iterable(part.items() for part in gathered))
        records = list_dataset(self.dataset_name)
        images: List[Dict] = []
        predictions: List[Dict] = []
        for record, d in zip(records, DatasetCatalog.get(self.dataset_name)):
            if d["image_id"] not in done:
                continue
            height, width, results = done[d["image_id"]]
            images.append(image_entry(record.image_id, record.file_name, height, width))
            predictions += [dict(r, image_id=record.image_id) for r in results]
        annotations = prediction_annotations(predictions, {im["id"]: im for im in images}, self.score_thresh)
        write_coco_json(self.path, images, annotations)
        logger.info("Wrote %d pseudo-labels on %d images of '%s' to %s", len(annotations), len(images), self.dataset_name, self.path)
        return {}
