"""Set criterion of Mask2Former: classification CE + point-sampled mask BCE and dice."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import get_uncertain_point_coords_with_randomness, point_sample
from detectron2.utils import comm
from torch import nn

from cad.modeling.mask2former.losses import dice_loss, mask_uncertainty, sigmoid_ce_loss

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def num_masks_across_processes(targets: List[Dict[str, torch.Tensor]], device: torch.device) -> float:
    """Average number of target masks per process, at least 1 (the loss normaliser)."""
    n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(n)
    return torch.clamp(n / comm.get_world_size(), min=1).item()


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 (AMP) -> fp32; fp32/fp64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _permutation(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch, torch.cat([src for src, _ in indices])


class SetCriterion(nn.Module):
    """Losses `loss_ce`, `loss_mask`, `loss_dice` for the final output and, with deep
    supervision, `*_{i}` for each auxiliary output. Unweighted; the meta-architecture applies
    `weight_dict`.

    Args:
        num_classes: K foreground classes (logits have K+1 columns, the last is no-object).
        matcher: `HungarianMatcher`.
        eos_coef: CE weight of the no-object class (0.1).
        num_points, oversample_ratio, importance_sample_ratio: point sampling of the mask
            losses (12544, 3.0, 0.75): uncertainty-based importance sampling (PointRend).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, logits: torch.Tensor, targets, indices: Indices) -> torch.Tensor:
        """logits (B, Q, K+1): CE with unmatched queries labelled no-object (class K)."""
        batch, src = _permutation(indices)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch, src] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        logits = _full_precision(logits)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))

    def loss_masks(self, pred_masks: torch.Tensor, targets, indices: Indices, num_masks: float):
        """pred_masks (B, Q, H, W) logits; target masks are sampled at the same normalised points."""
        batch, src = _permutation(indices)
        src_masks = _full_precision(pred_masks[batch, src][:, None])
        tgt_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src_masks)[:, None]
        if len(src_masks) == 0:
            zero = pred_masks.sum() * 0.0
            return zero, zero
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src_masks, mask_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            point_labels = point_sample(tgt_masks, coords, align_corners=False).squeeze(1)
        point_logits = point_sample(src_masks, coords, align_corners=False).squeeze(1)
        return sigmoid_ce_loss(point_logits, point_labels, num_masks), dice_loss(point_logits, point_labels, num_masks)

    def _losses(self, outputs, targets, num_masks: float, suffix: str) -> Dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        mask, dice = self.loss_masks(outputs["pred_masks"], targets, indices, num_masks)
        ce = self.loss_labels(outputs["pred_logits"], targets, indices)
        return {f"loss_ce{suffix}": ce, f"loss_mask{suffix}": mask, f"loss_dice{suffix}": dice}

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """outputs: pred_logits, pred_masks, aux_outputs (list of dicts); targets: per image
        `labels` (T,) int64 and `masks` (T, H, W) in {0, 1}."""
        num_masks = num_masks_across_processes(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_masks, "")
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update(self._losses(aux, targets, num_masks, f"_{i}"))
        return losses
