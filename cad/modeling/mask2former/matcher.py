"""Hungarian matching of predicted queries to target instances (Mask2Former)."""
from typing import Dict, List, Tuple

import torch
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn

from cad.modeling.mask2former.losses import pairwise_dice_cost, pairwise_sigmoid_ce_cost


def matching_cost(
    pred_logits: torch.Tensor,
    pred_point_masks: torch.Tensor,
    tgt_labels: torch.Tensor,
    tgt_point_masks: torch.Tensor,
    cost_class: float,
    cost_mask: float,
    cost_dice: float,
) -> torch.Tensor:
    """Cost matrix of one image.

    pred_logits (Q, K+1); pred_point_masks (Q, P) logits; tgt_labels (T,); tgt_point_masks (T, P)
    in {0, 1}. Returns (Q, T): cost_mask·BCE + cost_class·(−p(class)) + cost_dice·dice.
    """
    prob = pred_logits.softmax(-1)
    c_class = -prob[:, tgt_labels]
    c_mask = pairwise_sigmoid_ce_cost(pred_point_masks, tgt_point_masks)
    c_dice = pairwise_dice_cost(pred_point_masks, tgt_point_masks)
    return cost_mask * c_mask + cost_class * c_class + cost_dice * c_dice


def solve_assignment(cost: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost matching of a (Q, T) cost matrix: (query indices, target indices), int64."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher(nn.Module):
    """Match queries to targets on `num_points` uniformly random points shared by one image's
    predicted and target masks; costs in fp32 with autocast off (as the reference)."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]):
        """outputs: pred_logits (B, Q, K+1), pred_masks (B, Q, H, W); targets: per image
        `labels` (T,) and `masks` (T, H', W'). Returns per image (query idx, target idx)."""
        indices = []
        for b, target in enumerate(targets):
            logits = outputs["pred_logits"][b].float()
            masks = outputs["pred_masks"][b].float()
            tgt_masks = target["masks"].to(masks)
            coords = torch.rand(1, self.num_points, 2, device=masks.device)
            with torch.autocast(device_type=masks.device.type, enabled=False):
                tgt_points = point_sample(tgt_masks[:, None], coords.repeat(len(tgt_masks), 1, 1), align_corners=False)
                pred_points = point_sample(masks[:, None], coords.repeat(len(masks), 1, 1), align_corners=False)
                cost = matching_cost(
                    logits, pred_points.squeeze(1), target["labels"], tgt_points.squeeze(1),
                    self.cost_class, self.cost_mask, self.cost_dice,
                )
            indices.append(solve_assignment(cost))
        return indices
