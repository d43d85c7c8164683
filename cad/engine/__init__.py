"""Trainers, launch (CPU/GPU, multi-node) and SLURM submission."""
from cad.engine.copy_paste_trainer import CopyPasteTrainer
from cad.engine.launch import launch
from cad.engine.trainer import TRAINER_REGISTRY, CadTrainer

__all__ = ["TRAINER_REGISTRY", "CadTrainer", "CopyPasteTrainer", "launch"]
