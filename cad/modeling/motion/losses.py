"""DIOD / xMOD losses (DIOD trainPD_ts.computeWBCE(_TS), xMOD train/losses.py).

- Motion (or pseudo-label) mask loss: per sample and frame, the GT objects are matched to the
  non-background slots by Hungarian assignment on the BCE log-likelihood, then a weighted BCE:
  burn-in weight w = 2 - (object's pixel fraction); with a teacher, objects whose mean teacher-fg
  is < `conf_thresh` are dropped and w = 1 + that confidence. Averaged over a frame's objects,
  summed over frames, divided by the batch size.
- NLL: mean(-log(fg) * union of the kept GT masks); regulariser: mean(fg).
- Reconstruction: MSE; for range images only over valid (non-zero) elements.
"""
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def hungarian_match(masks: torch.Tensor, gt: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Match GT objects to slots. masks float [S, N] (clamped to (0, 1)), gt {0,1} float [M, N].

    score[s, m] = sum_n gt log(mask) + (1 - gt) log(1 - mask); maximised by
    `linear_sum_assignment`. Returns (slot indices, GT indices) of the matched pairs.
    """
    with torch.no_grad():
        lm, l1m = masks.log().double().cpu(), (1 - masks).log().double().cpu()
        g = gt.double().cpu()
        score = lm @ g.T + l1m @ (1 - g).T
    rows, cols = linear_sum_assignment(-score.numpy())
    return rows, cols


def frame_ids_to_onehot(ids: torch.Tensor) -> torch.Tensor:
    """Instance ids int [N] (0 = background) -> one-hot float [M, N] of the M present ids."""
    present = torch.unique(ids[ids > 0])
    return (ids[None] == present[:, None]).float()


def mask_loss(
    masks: torch.Tensor,
    gt_ids: torch.Tensor,
    conf: Optional[torch.Tensor] = None,
    conf_thresh: float = 0.9,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hungarian-matched weighted BCE of slot masks against instance ids.

    masks float [B, T, K, h, w] (last slot = background, never matched); gt_ids int [B, T, h, w];
    conf: teacher fg [B, T, h, w] or None (burn-in weighting). Returns (loss scalar,
    union of the kept GT masks float [B, T, h, w] for the NLL term).
    """
    b, t, k, h, w = masks.shape
    m = masks[:, :, :-1].reshape(b, t, k - 1, h * w) * 0.999 + 1e-8
    ids = gt_ids.reshape(b, t, h * w)
    union = torch.zeros(b, t, h * w, device=masks.device)
    total = masks.new_zeros(())
    for i in range(b):
        for j in range(t):
            gt = frame_ids_to_onehot(ids[i, j])
            if len(gt) == 0:
                continue
            if conf is None:
                weight = 2 - gt.mean(1)
            else:
                c = (gt * conf[i, j].reshape(1, -1)).sum(1) / gt.sum(1)
                keep = c >= conf_thresh
                gt, weight = gt[keep], 1 + c[keep]
                if len(gt) == 0:
                    continue
            rows, cols = hungarian_match(m[i, j], gt)
            mm, g = m[i, j][rows], gt[cols]
            bce = -(weight[cols, None] * g * mm.log() + (1 - g) * (1 - mm).log())
            total = total + bce.mean(1).mean()
            union[i, j] = gt.amax(0)
    return total / b, union.reshape(b, t, h, w)


def fg_losses(fg: torch.Tensor, union: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(NLL = mean(-log(fg) * union), reg = mean(fg)) for fg float [B, T, h, w]."""
    return (-(fg.clamp(min=1e-8).log()) * union).mean(), fg.mean()


def masked_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over the elements where `target` > 0 (xMOD 3D: no point = all channels 0)."""
    valid = (target > 0).float()
    return ((recon - target) ** 2 * valid).sum() / valid.sum().clamp(min=1)


def resize_ids(ids: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of instance ids int [B, T, H, W] to [B, T, *size]."""
    b, t = ids.shape[:2]
    out = F.interpolate(ids.reshape(b * t, 1, *ids.shape[-2:]).float(), size=size, mode="nearest")
    return out.reshape(b, t, *size).long()
