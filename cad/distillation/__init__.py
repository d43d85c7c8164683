"""Teacher-student training: EMA updates, Guided Distillation and DIOD/xMOD self-distillation
(importing it registers their trainers)."""
from cad.distillation import motion  # noqa: F401  (registers MotionTrainer)
from cad.distillation.ema import ema_update, teacher_decay
from cad.distillation.guided import GuidedDistillationTrainer, filter_pseudo_labels

__all__ = ["GuidedDistillationTrainer", "ema_update", "filter_pseudo_labels", "teacher_decay"]
