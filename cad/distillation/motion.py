"""DIOD / xMOD self-distillation: the EMA teacher update and the registered `MotionTrainer`.

Stages (DIOD): burn-in on motion masks until CAD.MOTION.TEACHER_START_ITER, then the teachers are
copied from the students and follow them by EMA (keep rate 0.996, every optimiser step, whole
state_dict: BN statistics and the slot buffer included). The model's checkpoint holds students,
teachers and the stage flag, so `--resume` restores all of them. Adam (lr 5e-4), gradient-norm
clip (SOLVER.CLIP_GRADIENTS), lr = base * min(1, it/warmup) * 0.5^(it/half-life) (DIOD).
"""
import logging

import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import SimpleTrainer
from detectron2.solver import LRMultiplier
from detectron2.solver.build import maybe_add_gradient_clipping
from fvcore.common.param_scheduler import ParamScheduler

from cad.config import ConfigError
from cad.data.motion import MotionClipMapper, supervision_paths
from cad.data.worker_batches import build_worker_batched_train_loader
from cad.distillation.ema import ema_update, unwrap
from cad.engine.distributed import average_buffers
from cad.engine.trainer import TRAINER_REGISTRY, CadTrainer
from cad.modeling.motion import RANGE_ARCHS

logger = logging.getLogger(__name__)


def lr_factor(it: int, warmup: int, half_life: float, decay_in_warmup: bool = True) -> float:
    """DIOD's schedule factor min(1, it/warmup) * 0.5^(it/half_life), the decay also during warmup
    (trainPD_ts.py); `decay_in_warmup=False`: xMOD's (train/trainer._update_learning_rate), a linear
    warmup, then 0.5^(it/half_life)."""
    if not decay_in_warmup and it + 1 < warmup:
        return (it + 1) / warmup
    return min(1.0, (it + 1) / max(1, warmup)) * 0.5 ** (it / half_life)


class DIODLRSchedule(ParamScheduler):
    """`lr_factor` as an fvcore ParamScheduler (called with the training progress in [0, 1))."""

    def __init__(self, max_iter: int, warmup: int, half_life: float, decay_in_warmup: bool = True):
        self.max_iter, self.warmup, self.half_life, self.decay_in_warmup = max_iter, warmup, half_life, decay_in_warmup

    def __call__(self, where: float) -> float:
        return lr_factor(int(round(where * self.max_iter)), self.warmup, self.half_life, self.decay_in_warmup)


class MotionStepTrainer(SimpleTrainer):
    """One iteration: start distillation at `start_iter` (teacher <- student), the usual
    forward/backward/step, then the EMA teacher update once distillation runs."""

    def __init__(self, model, data_loader, optimizer, start_iter: int, keep_rate: float):
        super().__init__(model, data_loader, optimizer)
        self.teacher_start_iter, self.keep_rate = start_iter, keep_rate

    def run_step(self) -> None:
        model = unwrap(self.model)
        if 0 <= self.teacher_start_iter <= self.iter and not bool(model.distilling):
            logger.info("Iteration %d: burn-in done, self-distillation starts (teacher <- student)", self.iter)
            model.start_distillation()
        super().run_step()
        average_buffers(model.students)  # same BN statistics on every rank, hence the same EMA teacher
        if bool(model.distilling):
            ema_update(model.teachers, model.students, self.keep_rate)


def epochs_to_iterations(cfg):
    """`cfg` with SOLVER.MAX_ITER = CAD.MOTION.EPOCHS * floor(training videos / SOLVER.IMS_PER_BATCH)
    (the official scripts' epochs: one random clip per camera video, DataLoader drop_last); `cfg`
    itself when EPOCHS is 0."""
    epochs = cfg.CAD.MOTION.EPOCHS
    if epochs <= 0:
        return cfg
    videos = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
    per_epoch = videos // cfg.SOLVER.IMS_PER_BATCH
    if per_epoch == 0:
        raise ConfigError(f"CAD.MOTION.EPOCHS: {videos} training videos make no batch of SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = epochs * per_epoch
    cfg.freeze()
    logger.info("CAD.MOTION.EPOCHS %d x %d iterations (%d videos, batch %d): SOLVER.MAX_ITER = %d",
                epochs, per_epoch, videos, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER)
    return cfg


@TRAINER_REGISTRY.register()
class MotionTrainer(CadTrainer):
    """CadTrainer for the `DIOD` / `DIOD3D` / `XMOD` meta-architectures (clip loaders, Adam, DIOD lr,
    EMA; training length in epochs with CAD.MOTION.EPOCHS)."""

    def __init__(self, cfg):
        super().__init__(epochs_to_iterations(cfg))

    @staticmethod
    def _with_range(cfg) -> bool:
        return cfg.MODEL.META_ARCHITECTURE in RANGE_ARCHS

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        m = cfg.CAD.MOTION
        return MotionStepTrainer(model, data_loader, optimizer, m.TEACHER_START_ITER, m.EMA_KEEP_RATE)

    @classmethod
    def build_optimizer(cls, cfg, model):
        params = [p for p in model.parameters() if p.requires_grad]
        return maybe_add_gradient_clipping(cfg, torch.optim.Adam)(params, lr=cfg.SOLVER.BASE_LR)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # Detectron2's LRMultiplier: its state is checkpointed, so --resume continues the schedule.
        m = cfg.CAD.MOTION
        sched = DIODLRSchedule(cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, m.LR_HALF_LIFE, m.LR_DECAY_IN_WARMUP)
        return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)

    @classmethod
    def build_train_loader(cls, cfg):
        """Clip loader of DATASETS.TRAIN (`cad.data.worker_batches`); a video without masks of
        CAD.MOTION.SUPERVISION is one `ConfigError` here, before training starts. Every mapped clip has
        the size CAD.MOTION.INPUT_SIZE, so Detectron2's aspect-ratio grouping puts them all in one group:
        the batches are runs of consecutive clips, which the loader forms without grouping."""
        videos = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        for d in videos:
            supervision_paths(d, cfg.CAD.MOTION.SUPERVISION)
        mapper = MotionClipMapper(cfg, True, cls._with_range(cfg))
        return build_worker_batched_train_loader(cfg, mapper, dataset=videos, aspect_ratio_grouping=False)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=MotionClipMapper(cfg, False, cls._with_range(cfg)))
