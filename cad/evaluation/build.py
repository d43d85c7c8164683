"""Pick the evaluator of a split from its metadata `evaluator_type`."""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from cad.config import ConfigError
from cad.evaluation.cityscapes import instance_evaluator
from cad.evaluation.class_agnostic import ClassAgnosticCOCOEvaluator
from cad.evaluation.predictions import PredictionWriter

logger = logging.getLogger(__name__)

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


@EVALUATOR_REGISTRY.register()
def cityscapes_instance(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """Cityscapes instance segmentation AP and AP50 ("segm"), scored by cityscapesscripts
    (Detectron2's CityscapesInstanceEvaluator, as Guided Distillation's train_net.py; splits
    with evaluator_type "cityscapes_instance"). Its processes write to one temporary folder, so
    it runs on one machine (the official code asserts the same)."""
    if comm.get_world_size() != comm.get_local_size():
        raise ConfigError(f"'{dataset_name}' is scored by CityscapesInstanceEvaluator, which runs on one machine "
                          f"(its processes share a temporary folder): evaluate with --num-machines 1")
    return instance_evaluator(dataset_name)


@EVALUATOR_REGISTRY.register()
def predictions(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """No metrics, only `coco_instances_results.json` (splits without ground truth: `images:DIR`)."""
    return PredictionWriter(dataset_name, output_dir)


def forget_deleted_gt_cache(dataset_name: str) -> None:
    """Detectron2's COCOEvaluator converts a split without a `json_file` to
    `<output_dir>/<name>_coco_format.json` once per process and stores that path in the split's
    metadata. When that file has since been deleted (an earlier output folder removed), drop the
    path so that the next COCOEvaluator converts the split again instead of failing to open it."""
    metadata = MetadataCatalog.get(dataset_name)
    cached = metadata.get("json_file")
    if cached and os.path.basename(cached) == f"{dataset_name}_coco_format.json" and not os.path.exists(cached):
        logger.info("COCO-format cache %s of '%s' was deleted; converting the split again", cached, dataset_name)
        del metadata.json_file


def build_evaluator(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """The evaluator of the split's `evaluator_type`, plus those of `CAD.EVAL_EXTRA_TYPES` and the
    training-JSON writer when `CAD.EVAL_DUMP_TRAINING_JSON` is set (then a split without an
    evaluator type only gets the writer). A clear error when a type is not registered."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    dump = cfg.CAD.EVAL_DUMP_TRAINING_JSON
    types = [] if evaluator_type is None and dump else [evaluator_type]
    types += [t for t in cfg.CAD.EVAL_EXTRA_TYPES if t not in types]
    unknown = [t for t in types if t is None or t not in EVALUATOR_REGISTRY]
    if unknown:
        raise ValueError(
            f"no evaluator for dataset '{dataset_name}' (evaluator_type={unknown[0]!r}); "
            f"known types: {sorted(k for k, _ in EVALUATOR_REGISTRY)}"
        )
    forget_deleted_gt_cache(dataset_name)
    evaluators = [EVALUATOR_REGISTRY.get(t)(cfg, dataset_name, output_dir) for t in types]
    if dump:
        from cad.evaluation.training_json import TrainingJSONWriter, training_json_path

        path = training_json_path(dump, dataset_name, output_dir)
        evaluators.append(TrainingJSONWriter(dataset_name, path, cfg.CAD.EVAL_DUMP_SCORE_THRESH))
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
