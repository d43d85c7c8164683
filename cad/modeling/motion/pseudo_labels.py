"""DIOD teacher pseudo-labels and xMOD late fusion: pure functions on slot masks."""
import numpy as np
import torch
from skimage.measure import label as connected_components


def teacher_pseudo_labels(masks: torch.Tensor, min_area: int = 10) -> torch.Tensor:
    """Instance ids from the teacher's slot masks (DIOD trainPD_ts): per frame, argmax over slots,
    the background (last) slot -> 0, every 4-connected component of one slot becomes its own id;
    components with <= `min_area` pixels -> 0.

    masks float [B, T, K, h, w] -> ids int64 [B, T, h, w] (0 = background, ids unique per frame).
    The confidence filter (mean teacher fg >= 0.9) is applied by the loss (`mask_loss(conf=...)`).
    DIOD also merges slot 0 into the background; here slot 0 is an object like the others.
    """
    b, t, k = masks.shape[:3]
    lab = masks.argmax(2) + 1
    lab[lab == k] = 0
    lab = lab.cpu().numpy()
    out = np.zeros_like(lab)
    for i in range(b):
        for j in range(t):
            comp = connected_components(lab[i, j], background=0, connectivity=1)
            areas = np.bincount(comp.reshape(-1))
            keep = areas > min_area
            keep[0] = False
            out[i, j] = np.where(keep[comp], comp, 0)
    return torch.from_numpy(out).to(masks.device)


def late_fusion(masks_2d: torch.Tensor, masks_3d: torch.Tensor, iou_thresh: float = 0.1) -> torch.Tensor:
    """xMOD late fusion (eval/merging_strategies): argmax one-hots A (2D) and B (3D) over all K slots;
    for every pair (i, j) with IoU(A_i, B_j) > `iou_thresh`, out_i |= A_i | B_j. A 2D slot with no
    match ends up empty.

    masks_* float [K, h, w] -> binary float [K, h, w] (a pixel may be in several slots).
    """
    k = masks_2d.shape[0]
    a = torch.nn.functional.one_hot(masks_2d.argmax(0), k).permute(2, 0, 1).reshape(k, -1).float()
    b = torch.nn.functional.one_hot(masks_3d.argmax(0), k).permute(2, 0, 1).reshape(k, -1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    match = (inter / union.clamp(min=1) > iou_thresh).float()  # [K2d, K3d]
    fused = (match.any(1, keepdim=True).float() * a + match @ b).clamp(max=1)
    return fused.reshape_as(masks_2d)
