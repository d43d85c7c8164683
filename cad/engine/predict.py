"""Run a config's model on the first images of a split: live predictions (tools/visualize.py), speed."""
import logging
import time
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


def benchmark_inference(cfg, dataset_name: str, num_images: int, warmup: int = 1) -> Dict[str, float]:
    """Inference speed of the config's model on `num_images` images of a split (after `warmup`).

    Returns images/s of the model's forward (data loading excluded), data loading s/image, and for
    pseudo-label meta-architectures the share of the forward spent outside the discovery method
    (`overhead_pct`: image conversion and `Instances`), plus peak memory (`peak_memory_mb`).
    """
    from cad.engine.benchmark import peak_memory_mb

    model = build_loaded_model(cfg)
    method = getattr(model, "method", None)
    inside = [0.0]
    if method is not None:
        for name in ("stage1", "stage2"):
            original = getattr(method, name)

            def timed(*args, _original=original):
                start = time.perf_counter()
                out = _original(*args)
                inside[0] += time.perf_counter() - start
                return out

            setattr(method, name, timed)
    dicts = DatasetCatalog.get(dataset_name)[: warmup + num_images]
    loader = iter(build_detection_test_loader(dicts, mapper=CadDatasetMapper(cfg, is_train=False)))
    forward = loading = 0.0
    with torch.no_grad():
        for i in range(len(dicts)):
            start = time.perf_counter()
            inputs = next(loader)
            loaded = time.perf_counter()
            if i == warmup:
                inside[0] = 0.0
            model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= warmup:
                forward += time.perf_counter() - loaded
                loading += loaded - start
    n = max(1, len(dicts) - warmup)
    out = {"images": n, "images_per_s": n / forward, "loading_s_per_image": loading / n}
    if method is not None:
        out["overhead_pct"] = 100.0 * (forward - inside[0]) / forward
    return {**out, **peak_memory_mb()}
