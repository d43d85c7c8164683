"""Guided Distillation checkpoint layouts (registered in `cad.checkpoint.layouts`).

The official trainer (GuidedDistillation `modules/defaults.py`, `modules/train_loop.py`) saves,
with Detectron2's checkpointer, its `EnsembleTSModel` (`modules/ensemble.py`):

- stage 1 (`SSL.TRAIN_SSL False`, `EnsembleTSModel(model, None)`): `{"model": {"modelTeacher.<MaskFormer keys>"}, ...}`;
- stage 2: `modelTeacher.*` + `modelStudent.*`.

The member keys are the MaskFormer's (`backbone.*`, `sem_seg_head.pixel_decoder.*`,
`sem_seg_head.predictor.*`, `criterion.empty_weight`), plus `ssl_criterion.empty_weight`: the
official MaskFormer has a second `SetCriterion` for the unlabeled loss. cad's `Mask2Former` uses
one criterion for both losses; the buffer is the same constant (ones, `NO_OBJECT_WEIGHT` for the
no-object class), so it is checked against `criterion.empty_weight` and dropped.

`to_cad(obj, cfg)` returns a plain `Mask2Former` state dict: the member the official
`train_net.py --eval-only` evaluates (`SSL.EVAL_WHO`, default "STUDENT") for a stage-2 file,
the teacher (its only member) for a stage-1 file. cad's own stage-2 checkpoints hold the same
`modelTeacher.*`/`modelStudent.*` keys (its teacher-student module uses the official member
names), so they go through the same layout. Plain Mask2Former files (`{"model": {...}}` with the
official names, e.g. cad's stage-1 checkpoints) need no conversion.
"""
import logging
from typing import Any, Dict, Mapping, Optional

import torch

from cad.backbones.vit import CheckpointLayoutError
from cad.checkpoint.layouts import Layout, StateDict, register_layout

logger = logging.getLogger(__name__)

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


def member_state(model: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The `prefix` member of an ensemble state dict as a plain Mask2Former state dict
    (prefix stripped, `ssl_criterion.*` checked against `criterion.*` and dropped)."""
    state = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
    for key in [k for k in state if k.startswith(SSL_CRITERION)]:
        twin = "criterion." + key[len(SSL_CRITERION):]
        value = state.pop(key)
        if twin in state and not torch.equal(torch.as_tensor(state[twin]), torch.as_tensor(value)):
            raise CheckpointLayoutError(f"'{prefix}{key}' differs from '{prefix}{twin}': not a Guided Distillation checkpoint")
    return state


def eval_member(cfg) -> str:
    """The member a stage-2 file loads into one model: SSL.EVAL_WHO "student" (official default)
    or "teacher" (`GuidedDistillationTrainer.evaluate` loads each member for "both")."""
    who = str(cfg.SSL.EVAL_WHO if cfg is not None else "student").lower()
    if who not in ("student", "teacher"):
        raise CheckpointLayoutError(f"a stage-2 checkpoint loads into one model here: SSL.EVAL_WHO must be "
                                    f"STUDENT or TEACHER, got {cfg.SSL.EVAL_WHO!r}")
    return STUDENT if who == "student" else TEACHER


def stage1_to_cad(obj: Any, cfg) -> StateDict:
    return member_state(obj["model"], TEACHER)


def stage2_to_cad(obj: Any, cfg) -> StateDict:
    prefix = eval_member(cfg)
    logger.info("Guided Distillation stage-2 checkpoint: loading its %s (SSL.EVAL_WHO)", prefix.rstrip("."))
    return member_state(obj["model"], prefix)


GD_STAGE1 = register_layout(
    Layout(
        name="guided_distillation_stage1",
        matches=lambda obj: _members(obj) == {TEACHER},
        to_cad=stage1_to_cad,
        description="Guided Distillation stage-1 checkpoint: {'model': {'modelTeacher.*'}} (the teacher)",
    )
)
GD_STAGE2 = register_layout(
    Layout(
        name="guided_distillation_stage2",
        matches=lambda obj: _members(obj) == {TEACHER, STUDENT},
        to_cad=stage2_to_cad,
        description="Guided Distillation stage-2 checkpoint: 'modelTeacher.*' + 'modelStudent.*' (SSL.EVAL_WHO picks one)",
    )
)
