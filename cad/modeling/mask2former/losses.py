"""Mask losses on sampled points (Mask2Former): pairwise costs for matching and matched losses.

Shapes: logits/targets of N predicted and M target masks on P points, (N, P) and (M, P).
"""
import torch
import torch.nn.functional as F


def pairwise_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, P) logits, (M, P) binary targets -> (N, M) dice loss 1 - (2|X∩Y|+1)/(|X|+|Y|+1)."""
    inputs = inputs.sigmoid()
    numerator = 2 * torch.einsum("nc,mc->nm", inputs, targets)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_sigmoid_ce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, P) logits, (M, P) binary targets -> (N, M) mean binary cross-entropy over points."""
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    loss = torch.einsum("nc,mc->nm", pos, targets) + torch.einsum("nc,mc->nm", neg, 1 - targets)
    return loss / inputs.shape[1]


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Matched pairs: (N, P) logits and (N, P) targets -> sum of dice losses / num_masks."""
    inputs = inputs.sigmoid()
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Matched pairs: mean BCE over points, summed over masks, / num_masks."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def mask_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of (R, 1, ...) mask logits: -|logit| (highest at the decision boundary)."""
    return -logits.abs()
