"""Pick the evaluator of a split from its metadata `evaluator_type`."""
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils.registry import Registry

from cad.evaluation.class_agnostic import ClassAgnosticCOCOEvaluator

EVALUATOR_REGISTRY = Registry("CAD_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Evaluator factories keyed by a split's `MetadataCatalog.get(name).evaluator_type`.
Each is called as `factory(cfg, dataset_name, output_dir)` and returns a `DatasetEvaluator`.
"""


@EVALUATOR_REGISTRY.register()
def class_agnostic(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    metadata = MetadataCatalog.get(dataset_name)
    return ClassAgnosticCOCOEvaluator(
        dataset_name,
        output_dir=output_dir,
        max_dets=metadata.get("max_dets", cfg.CAD.EVAL_MAX_DETS),
        tasks=metadata.get("eval_tasks", None),  # e.g. ("bbox",) for box-only ground truth
    )


@EVALUATOR_REGISTRY.register()
def coco(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """Multi-class COCO AP (Detectron2's COCOEvaluator; splits with evaluator_type "coco")."""
    return COCOEvaluator(dataset_name, output_dir=output_dir, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)


def build_evaluator(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """The evaluator registered for the split's `evaluator_type`; a clear error if none is."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type is None or evaluator_type not in EVALUATOR_REGISTRY:
        raise ValueError(
            f"no evaluator for dataset '{dataset_name}' (evaluator_type={evaluator_type!r}); "
            f"known types: {sorted(k for k, _ in EVALUATOR_REGISTRY)}"
        )
    return EVALUATOR_REGISTRY.get(evaluator_type)(cfg, dataset_name, output_dir)
