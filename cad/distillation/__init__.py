"""Teacher-student training (DIOD / xMOD self-distillation)."""
from cad.distillation import motion  # noqa: F401  (registers MotionTrainer)
