"""Mask2Former's optimiser: AdamW/SGD with per-parameter LR and weight-decay groups and
optional full-model gradient-norm clipping."""
from typing import Any, Dict, List

import torch
from torch import nn

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def mask2former_param_groups(cfg, model: nn.Module) -> List[Dict[str, Any]]:
    """One group per parameter: LR × SOLVER.BACKBONE_MULTIPLIER inside `backbone`; weight
    decay SOLVER.WEIGHT_DECAY_NORM for norm layers (incl. Detectron2's FrozenBN/NaiveSyncBN),
    SOLVER.WEIGHT_DECAY_EMBED for nn.Embedding, none for Swin's relative position bias tables and
    absolute position embedding (official Mask2Former/Guided Distillation `build_optimizer`; a ViT's
    `pos_embed` and `cls_token` are decayed there, so they are here)."""
    from detectron2.layers import FrozenBatchNorm2d

    groups, seen = [], set()  # type: List[Dict[str, Any]], Set[int]
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
            if "backbone" in module_name:
                lr = lr * cfg.SOLVER.BACKBONE_MULTIPLIER
            if "relative_position_bias_table" in name or "absolute_pos_embed" in name:
                wd = 0.0
            if isinstance(module, _NORM_TYPES + (FrozenBatchNorm2d,)):
                wd = cfg.SOLVER.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding):
                wd = cfg.SOLVER.WEIGHT_DECAY_EMBED
            groups.append({"params": [p], "lr": lr, "weight_decay": wd})
    return groups


def build_mask2former_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER "ADAMW" or "SGD"; SOLVER.CLIP_GRADIENTS with CLIP_TYPE "full_model"
    clips the global gradient norm of all parameters to CLIP_VALUE before each step."""
    groups = mask2former_param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {cfg.SOLVER.OPTIMIZER!r}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        max_norm = clip.CLIP_VALUE

        class FullModelClipping(cls):
            def step(self, closure=None):
                params = [p for g in self.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, max_norm)
                return super().step(closure=closure)

        return FullModelClipping(groups, cfg.SOLVER.BASE_LR, **kwargs)
    from detectron2.solver.build import maybe_add_gradient_clipping

    return maybe_add_gradient_clipping(cfg, cls)(groups, cfg.SOLVER.BASE_LR, **kwargs)
