"""Teacher-student training: EMA updates and Guided Distillation (registers its trainer)."""
from cad.distillation.ema import ema_update, teacher_decay
from cad.distillation.guided import GuidedDistillationTrainer, filter_pseudo_labels

__all__ = ["GuidedDistillationTrainer", "ema_update", "filter_pseudo_labels", "teacher_decay"]
