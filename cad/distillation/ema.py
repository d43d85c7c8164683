"""Exponential-moving-average teacher updates, shared by teacher-student methods."""
from typing import Optional

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place, t <- decay·t + (1−decay)·s for every parameter and floating-point buffer
    (decay 0 copies exactly); other buffers (e.g. BN's num_batches_tracked) are copied (the
    reference's copy of them is a no-op). Both models must have the same state keys."""
    teacher, student = unwrap(teacher), unwrap(student)
    s_state = dict(student.named_parameters())
    s_state.update(student.named_buffers())
    t_state = dict(teacher.named_parameters())
    t_state.update(teacher.named_buffers())
    if t_state.keys() != s_state.keys():
        missing = sorted(set(t_state) ^ set(s_state))[:5]
        raise ValueError(f"teacher and student differ in state keys, e.g. {missing}")
    for name, t in t_state.items():
        s = s_state[name].detach()
        if decay == 0.0 or not t.is_floating_point():
            t.copy_(s)
        else:
            t.lerp_(s.to(t.dtype), 1.0 - decay)


def teacher_decay(iteration: int, burnin_iter: int, ema_decay: float) -> Optional[float]:
    """Teacher update before iteration `iteration`'s forward (Guided Distillation):
    None (keep the frozen stage-1 teacher) before `burnin_iter`, 0.0 (copy the student) at it,
    `ema_decay` after it."""
    if iteration < burnin_iter:
        return None
    return 0.0 if iteration == burnin_iter else ema_decay
