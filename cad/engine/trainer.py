"""cad's Detectron2 trainer: data, evaluators and device handling for every cad model.

`TRAINER_REGISTRY` holds trainer classes by name; `tools/train_net.py` builds
`cfg.CAD.TRAINER` (default `CadTrainer`). Method-specific trainers subclass `CadTrainer` and
override `build_step_trainer` (how one iteration runs), the loaders, or `build_training`
(the checkpointed model and the step trainer, e.g. a teacher-student pair).
"""
import logging
import os
import weakref
from typing import Dict, List, Tuple

import torch
from detectron2.data import build_detection_test_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import Registry

from cad.checkpoint.loader import CadCheckpointer
from cad.config import ConfigError
from cad.data.mapper import CadDatasetMapper
from cad.data.worker_batches import build_worker_batched_train_loader, seed_global_rngs
from cad.engine.best_checkpoint import BestMetricCheckpointer
from cad.engine.distributed import broadcast_buffers
from cad.engine.eta import EtaHook
from cad.engine.preemption import PreemptionHook
from cad.engine.resume import data_state, load_data_state, run_seed, step_seed
from cad.evaluation.build import build_evaluator
from cad.modeling.roi_align import use_threaded_roi_align_backward
from cad.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

# Written by `CadTrainer.test` in OUTPUT_DIR: the last evaluation's metrics, by task.
EVAL_RESULTS_FILE = "eval_results.json"

TRAINER_REGISTRY = Registry("CAD_TRAINER")
TRAINER_REGISTRY.__doc__ = "Trainer classes selected by cfg.CAD.TRAINER."


def ddp_device_kwargs() -> Dict:
    """`DistributedDataParallel` device arguments: the local GPU on CUDA, none on CPU (gloo)."""
    if torch.cuda.is_available():
        return {"device_ids": [comm.get_local_rank()]}
    return {"device_ids": None}


def build_ddp_model(model: torch.nn.Module) -> torch.nn.Module:
    """DDP (no buffer sync in forward, as Detectron2) with every rank starting from rank 0's
    parameters AND buffers; the model itself in one process."""
    ddp = create_ddp_model(model, broadcast_buffers=False, **ddp_device_kwargs())
    broadcast_buffers(model)
    return ddp


@TRAINER_REGISTRY.register()
class CadTrainer(DefaultTrainer):
    """`DefaultTrainer` that runs on CPU or CUDA, with cad's mapper and evaluators.

    Differences from Detectron2's trainer: DDP without `device_ids` on CPU (gloo), AMP only
    when CUDA is available, `CadDatasetMapper` (soft scores, corrupt images), evaluators
    chosen by the split's `evaluator_type` (`cad.evaluation.EVALUATOR_REGISTRY`), training
    batches from `cad.data.worker_batches` and the global generators seeded per iteration, so that
    `--resume` continues exactly (`cad.engine.resume`).
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model, self._trainer = self.build_training(cfg)
        self.seed = run_seed(cfg)  # of the training step's draws; a checkpoint's replaces it on --resume
        self.scheduler = self.build_lr_scheduler(cfg, self._trainer.optimizer)
        # MODEL.WEIGHTS / --resume by cad's loading rule (strict; backbone-only files allowed here).
        self.checkpointer = CadCheckpointer(model, cfg.OUTPUT_DIR, cfg=cfg, for_training=True, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List:
        """Detectron2's hooks plus `PreemptionHook` (SLURM preemption at an iteration boundary),
        and on the main process `EtaHook` (training-time estimates after the first iterations and
        after the LR warm-up) and, with CAD.BEST_CHECKPOINT_METRIC and DATASETS.TEST,
        `BestMetricCheckpointer` after the evaluation hook (OUTPUT_DIR/model_best.pth)."""
        hooks = super().build_hooks() + [PreemptionHook()]
        if not comm.is_main_process():
            return hooks
        hooks.append(EtaHook(warmup=self.cfg.SOLVER.WARMUP_ITERS))
        metric = self.best_checkpoint_metric(self.cfg)
        if metric and self.cfg.DATASETS.TEST:
            hooks.append(BestMetricCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, metric, self.cfg.CAD.BEST_CHECKPOINT_MODE))
        elif metric:
            logger.info("CAD.BEST_CHECKPOINT_METRIC %s: no DATASETS.TEST to evaluate, so no model_best.pth", metric)
        return hooks

    @classmethod
    def best_checkpoint_metric(cls, cfg) -> str:
        """The evaluation-result key model_best.pth tracks ("" = none)."""
        return cfg.CAD.BEST_CHECKPOINT_METRIC

    def run_step(self) -> None:
        """One iteration, with Python's, NumPy's and torch's global generators seeded from (seed,
        rank, iteration) first (`cad.engine.resume`)."""
        seed_global_rngs(step_seed(self.seed, comm.get_rank(), self.iter))
        super().run_step()

    def training_loaders(self) -> Dict[str, object]:
        """The loaders whose positions a checkpoint holds, by name: the step's ("train", and
        "unlabeled" for a step trainer with an `unlabeled_loader`) and Detectron2's PreciseBN hook's."""
        loaders = {"train": self._trainer.data_loader}
        if hasattr(self._trainer, "unlabeled_loader"):
            loaders["unlabeled"] = self._trainer.unlabeled_loader
        loaders.update({"precise_bn": h._data_loader for h in self._hooks if isinstance(h, hooks.PreciseBN)})
        return loaders

    def state_dict(self) -> Dict:
        """Iteration, hook state (LR scheduler), the step trainer's state (optimizer, AMP scaler) and
        the data state (seed, loader positions: `cad.engine.resume`).

        Detectron2 0.6's DefaultTrainer leaves the optimizer out, so `--resume` would restart
        SGD momentum / AdamW moments from zero.
        """
        return {**super().state_dict(), "_trainer": self._trainer.state_dict(), "data": data_state(self.seed, self.training_loaders())}

    def load_state_dict(self, state_dict: Dict) -> None:
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])
        seed = load_data_state(state_dict.get("data"), self.training_loaders(), self.seed)
        if 0 <= self.cfg.SEED != seed:
            logger.warning("--resume: SEED %d is not used: the run goes on with its checkpoint's seed %d", self.cfg.SEED, seed)
        self.seed = seed

    @classmethod
    def build_training(cls, cfg) -> Tuple[torch.nn.Module, SimpleTrainer]:
        """The checkpointed model and the object that runs one iteration, built in Detectron2's
        order (model, optimizer, loader, DDP). Trainers with several models override this.
        RoI poolers get the multi-threaded CPU backward (`cad.modeling.roi_align`)."""
        model = cls.build_model(cfg)
        use_threaded_roi_align_backward(model)
        optimizer = cls.build_optimizer(cfg, model)
        data_loader = cls.build_step_loader(cfg)
        return model, cls.build_step_trainer(cfg, build_ddp_model(model), data_loader, optimizer)

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        """SOLVER.OPTIMIZER "SGD" (Detectron2's: MOMENTUM, NESTEROV) or "ADAMW" (decoupled weight
        decay, `torch.optim.AdamW` defaults otherwise); both with Detectron2's parameter groups
        (WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS) and SOLVER.CLIP_GRADIENTS."""
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        if cfg.SOLVER.OPTIMIZER != "ADAMW":
            raise ValueError(f"SOLVER.OPTIMIZER must be SGD or ADAMW, got {cfg.SOLVER.OPTIMIZER!r}")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """Detectron2's schedulers, plus "WarmupPolyLR" (SOLVER.POLY_LR_*) from its DeepLab project."""
        from detectron2.projects.deeplab import build_lr_scheduler

        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer) -> SimpleTrainer:
        """The object that runs one iteration: AMP only when enabled and CUDA is present."""
        if cfg.SOLVER.AMP.ENABLED and torch.cuda.is_available():
            return AMPTrainer(model, data_loader, optimizer)
        if cfg.SOLVER.AMP.ENABLED:
            logger.warning("SOLVER.AMP.ENABLED is ignored: CUDA is not available")
        return SimpleTrainer(model, data_loader, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's training loader (dataset, sampler, aspect-ratio grouping) with `CadDatasetMapper`,
        batches built in the workers (`cad.data.worker_batches`)."""
        return build_worker_batched_train_loader(cfg, CadDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_step_loader(cls, cfg):
        """The loader the training step draws from; `build_train_loader` (also what Detectron2's
        PreciseBN hook draws from) unless a trainer augments whole batches (CopyPasteTrainer)."""
        return cls.build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=CadDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators: List[DatasetEvaluator] = None):
        """Evaluate on every `DATASETS.TEST` split; also writes `OUTPUT_DIR/eval_results.json`.

        (`OUTPUT_DIR/metrics.json` is Detectron2's line-per-iteration training log.)
        """
        return cls.save_results(cfg, super().test(cfg, model, evaluators))

    @staticmethod
    def save_results(cfg, results: Dict) -> Dict:
        """Write `results` to OUTPUT_DIR/eval_results.json (main process) and return them."""
        if comm.is_main_process() and results:
            atomic_write_json(os.path.join(cfg.OUTPUT_DIR, EVAL_RESULTS_FILE), results)
        return results

    @classmethod
    def evaluate(cls, cfg, resume: bool = False) -> Dict:
        """`--eval-only`: MODEL.WEIGHTS (the last checkpoint of OUTPUT_DIR with `resume`) on every
        DATASETS.TEST split, plus the TEST.AUG results (keys suffixed "_TTA") when enabled."""
        model = cls.build_model(cfg)
        CadCheckpointer(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        return cls.save_results(cfg, cls.evaluate_model(cfg, model))

    @classmethod
    def eval_subfolders(cls, cfg) -> List[str]:
        """Folders under OUTPUT_DIR/inference/ that `evaluate` writes each split's outputs in ("" = none)."""
        return [""]

    @classmethod
    def evaluate_model(cls, cfg, model: torch.nn.Module, subfolder: str = "", tta: bool = True) -> Dict:
        """Results of `model` on DATASETS.TEST (evaluator outputs in OUTPUT_DIR/inference/<subfolder>/<split>)
        and, with `tta` and TEST.AUG.ENABLED, of its test-time augmentation (in inference_TTA/, keys
        + "_TTA", as the official Guided Distillation train_net.py names them)."""
        def evaluators(folder: str) -> List[DatasetEvaluator]:
            return [cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, folder, subfolder, name)) for name in cfg.DATASETS.TEST]

        tta_model = cls.with_test_time_augmentation(cfg, model) if tta and cfg.TEST.AUG.ENABLED else None
        # (Detectron2's test gives None on the other ranks for evaluators that only score on the main one)
        results = super(CadTrainer, cls).test(cfg, model, evaluators("inference")) or {}
        if tta_model is not None:
            tta = super(CadTrainer, cls).test(cfg, tta_model, evaluators("inference_TTA")) or {}
            results.update({f"{k}_TTA": v for k, v in tta.items()})
        return results

    @classmethod
    def with_test_time_augmentation(cls, cfg, model: torch.nn.Module) -> torch.nn.Module:
        """`model` wrapped for TEST.AUG (Mask2Former: `Mask2FormerWithTTA`); `ConfigError` for others."""
        if cfg.MODEL.META_ARCHITECTURE != "Mask2Former":
            raise ConfigError(f"TEST.AUG.ENABLED: test-time augmentation is implemented for Mask2Former, not {cfg.MODEL.META_ARCHITECTURE}")
        from cad.modeling.mask2former.tta import Mask2FormerWithTTA

        return Mask2FormerWithTTA(cfg, model)
