"""Guided Distillation's checkpoint files.

The official trainer (GuidedDistillation `modules/defaults.py`, `modules/train_loop.py`) saves,
with Detectron2's checkpointer, its `EnsembleTSModel` (`modules/ensemble.py`):

- stage 1 (`SSL.TRAIN_SSL False`, `EnsembleTSModel(model, None)`): `{"model": {"modelTeacher.<MaskFormer keys>"}, ...}`;
- stage 2: `modelTeacher.*` + `modelStudent.*`.

The member keys are the MaskFormer's (`backbone.*`, `sem_seg_head.pixel_decoder.*`,
`sem_seg_head.predictor.*`, `criterion.empty_weight`), plus `ssl_criterion.empty_weight`: the
official MaskFormer has a second `SetCriterion` for the unlabeled loss. cad's `Mask2Former` uses
one criterion for both losses; the buffer is the same constant (ones, `NO_OBJECT_WEIGHT` for the
no-object class), so it is checked against `criterion.empty_weight` and dropped.

Both layouts keep the member prefixes (`members`): the loader keeps one member, the one the
official `train_net.py --eval-only` evaluates (`SSL.EVAL_WHO`, default "student") unless the caller
asks for one (`SSL.TEACHER_CKPT` loads the teacher); a stage-1 file has the teacher only. cad's own
stage-2 checkpoints hold the same `modelTeacher.*`/`modelStudent.*` keys (its teacher-student
module uses the official member names), so they go through the same layout. Plain Mask2Former
files (`{"model": {...}}` with the official names, e.g. cad's stage-1 checkpoints) need no layout.
"""
from typing import Any, Mapping, Optional

import torch

from cad.checkpoint.layouts import Layout, StateDict, register_layout

TEACHER, STUDENT = "modelTeacher.", "modelStudent."
SSL_CRITERION = "ssl_criterion."


def _model_dict(obj: Any) -> Optional[Mapping[str, Any]]:
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, Mapping) and model else None


def _members(obj: Any) -> Optional[set]:
    """{"modelTeacher.", "modelStudent."} present in a file whose every key has one of them, else None."""
    model = _model_dict(obj)
    if model is None:
        return None
    found = set()
    for key in model:
        prefix = TEACHER if key.startswith(TEACHER) else STUDENT if key.startswith(STUDENT) else None
        if prefix is None:
            return None
        found.add(prefix)
    return found


def ensemble_to_cad(obj: Any) -> StateDict:
    """The ensemble's state dict, members kept, each member's `ssl_criterion.*` checked against its
    `criterion.*` and dropped (ValueError when they differ: not a Guided Distillation file)."""
    state = dict(obj["model"])
    for key in [k for k in state if k.split(".", 1)[1].startswith(SSL_CRITERION)]:
        prefix, name = key.split(".", 1)
        twin = f"{prefix}.criterion.{name[len(SSL_CRITERION):]}"
        value = state.pop(key)
        if twin in state and not torch.equal(torch.as_tensor(state[twin]), torch.as_tensor(value)):
            raise ValueError(f"'{key}' differs from '{twin}': not a Guided Distillation checkpoint")
    return state


GD_STAGE1 = register_layout(
    Layout(
        name="guided_distillation_stage1",
        matches=lambda obj: _members(obj) == {TEACHER},
        to_cad=ensemble_to_cad,
        description="Guided Distillation stage-1 checkpoint: {'model': {'modelTeacher.*'}} (the teacher)",
        members=(("teacher", TEACHER),),
    )
)
GD_STAGE2 = register_layout(
    Layout(
        name="guided_distillation_stage2",
        matches=lambda obj: _members(obj) == {TEACHER, STUDENT},
        to_cad=ensemble_to_cad,
        description="Guided Distillation stage-2 checkpoint: 'modelTeacher.*' + 'modelStudent.*' (SSL.EVAL_WHO picks one)",
        members=(("student", STUDENT), ("teacher", TEACHER)),
        member_key="SSL.EVAL_WHO",
    )
)
