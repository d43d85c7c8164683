"""Run a config's model on the first images of a split: live predictions (tools/visualize.py)."""
import logging
from typing import Dict, List

import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation.coco_evaluation import instances_to_coco_json

from cad.checkpoint.loader import CadCheckpointer
from cad.data.mapper import CadDatasetMapper
from cad.engine.trainer import TRAINER_REGISTRY

logger = logging.getLogger(__name__)


def build_loaded_model(cfg, weights: str = "") -> torch.nn.Module:
    """The model `cfg` builds, with `weights` (default MODEL.WEIGHTS) loaded by cad's rule
    (`cad.checkpoint.loader`: a full checkpoint, strictly), in eval mode."""
    model = TRAINER_REGISTRY.get(cfg.CAD.TRAINER).build_model(cfg)
    CadCheckpointer(model, cfg=cfg).load(weights or cfg.MODEL.WEIGHTS, checkpointables=[])
    return model.eval()


@torch.no_grad()
def predict_coco_results(cfg, dataset_name: str, num_images: int) -> List[Dict]:
    """COCO-format results (image_id, bbox XYWH, score, RLE segmentation for masks) of the model
    `cfg` builds (weights from MODEL.WEIGHTS) on the first `num_images` images of `dataset_name`,
    mapped as at test time (`CadDatasetMapper`, INPUT.MIN_SIZE_TEST/FORMAT)."""
    model = build_loaded_model(cfg)
    dicts = DatasetCatalog.get(dataset_name)[:num_images]
    loader = build_detection_test_loader(dicts, mapper=CadDatasetMapper(cfg, is_train=False))
    results: List[Dict] = []
    for inputs in loader:
        for inp, out in zip(inputs, model(inputs)):
            results += instances_to_coco_json(out["instances"].to("cpu"), inp["image_id"])
    return results
