"""Loss terms of class-agnostic detectors trained on pseudo-masks (CuVLER soft targets, CutLER DropLoss).

Pure functions on tensors. Shapes: R sampled proposals of a batch, K foreground classes
(logits have K + 1 columns, the last one is background), G pseudo-boxes per image, M the mask side.
Every loss is normalised by the number of terms (proposals or mask elements), never by the sum of
the weights, as in the reference (CuVLER `fast_rcnn.py` / `mask_head.py`).
"""
from typing import Optional

import torch
from fvcore.nn import giou_loss, smooth_l1_loss
from detectron2.layers import ciou_loss, diou_loss
from torch.nn import functional as F


def soft_target_cross_entropy(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    gt_scores: Optional[torch.Tensor] = None,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Softmax cross-entropy against soft targets, meaned over all R proposals.

    A foreground proposal matched to a pseudo-object of score s gets the target probability s on
    its class and 1 - s on background; a background proposal (class K) gets (0, ..., 0, 1)
    (CuVLER soft targets). With every s = 1 and no weights this is the usual cross-entropy.

    Args:
        logits: (R, K + 1) class logits, background last.
        gt_classes: (R,) int64 in [0, K]; K is background.
        gt_scores: (R,) soft-target score of each proposal's matched pseudo-object (ignored for
            background proposals); None means 1 everywhere.
        weights: (R,) per-proposal weight, e.g. DropLoss's 0/1; None means 1 everywhere.

    Returns:
        Scalar: sum_i weights_i * CE_i / R (0 when R = 0).
    """
    num = logits.shape[0]
    if num == 0:
        return logits.sum() * 0.0
    bg = logits.shape[1] - 1
    fg = gt_classes < bg
    s = torch.ones(num, dtype=logits.dtype, device=logits.device)
    if gt_scores is not None:
        s = torch.where(fg, gt_scores.to(logits.dtype), s)
    target = torch.zeros_like(logits)
    target[torch.arange(num, device=logits.device), gt_classes] = s
    target[:, bg] += 1.0 - s  # background rows: s = 1 at column K, so +0
    per_proposal = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    if weights is not None:
        per_proposal = per_proposal * weights.to(per_proposal.dtype)
    return per_proposal.sum() / num


def weighted_box_regression_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    num_proposals: int,
    loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> torch.Tensor:
    """Box loss of F foreground proposals, each weighted by its score, divided by all R proposals.

    Args:
        pred, target: (F, 4) predicted and target deltas (`smooth_l1`) or boxes XYXY
            (`giou`, `diou`, `ciou`).
        weights: (F,) per-proposal weight (the matched pseudo-object's score).
        num_proposals: R, the number of sampled proposals (foreground + background) of the batch.
        loss_type: "smooth_l1" (beta 0 is plain L1), "giou", "diou" or "ciou".

    Returns:
        Scalar: sum_f weights_f * loss_f / max(R, 1); with unit weights, Detectron2's value.
    """
    if loss_type == "smooth_l1":
        per_box = smooth_l1_loss(pred, target, smooth_l1_beta, reduction="none").sum(dim=1)
    elif loss_type == "giou":
        per_box = giou_loss(pred, target, reduction="none")
    elif loss_type == "diou":
        per_box = diou_loss(pred, target, reduction="none")
    elif loss_type == "ciou":
        per_box = ciou_loss(pred, target, reduction="none")
    else:
        raise ValueError(f"unknown box regression loss type '{loss_type}'")
    return (per_box * weights.to(per_box.dtype)).sum() / max(num_proposals, 1)


def weighted_mask_loss(mask_logits: torch.Tensor, gt_masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-pixel BCE-with-logits, each mask's pixels weighted by its score, meaned over N·M·M.

    Args:
        mask_logits: (N, M, M) logits of the foreground proposals' masks.
        gt_masks: (N, M, M) float targets in [0, 1].
        weights: (N,) per-mask weight (matched pseudo-object's score).
    """
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(mask_logits, gt_masks.to(mask_logits.dtype), reduction="none")
    return (bce * weights.to(bce.dtype)[:, None, None]).mean()


def elementwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of broadcastable XYXY boxes (..., 4) x (..., 4) -> (...); 0 where the union is empty."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)

    def area(b: torch.Tensor) -> torch.Tensor:
        return (b[..., 2:] - b[..., :2]).clamp(min=0).prod(dim=-1)

    union = area(boxes1) + area(boxes2) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def droploss_weights(pred_boxes: torch.Tensor, image_gt_boxes: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """CutLER DropLoss: keep (1) a proposal iff its predicted box has IoU > `iou_thresh` with some
    pseudo-box of its image, drop (0) it otherwise (CutLER `_forward_box`: "IoU > thresh").

    Args:
        pred_boxes: (R, 4) XYXY boxes predicted by the stage for its R proposals.
        image_gt_boxes: (R, G, 4) the G pseudo-boxes of each proposal's image (zero boxes pad
            images with fewer pseudo-objects; an image without any has all its proposals dropped).
        iou_thresh: the threshold (0.01 in CutLER/CuVLER).

    Returns:
        (R,) float tensor of 0/1 weights.
    """
    if image_gt_boxes.shape[1] == 0:
        return pred_boxes.new_zeros(pred_boxes.shape[0])
    max_iou = elementwise_box_iou(pred_boxes[:, None, :], image_gt_boxes).max(dim=1).values
    return (max_iou > iou_thresh).to(pred_boxes.dtype)
