"""Motion-segmentation metrics (DIOD / xMOD): fg-ARI, all-ARI and F1@50, and their evaluator.

- ARI is computed per clip over all pixels of its frames jointly (DIOD evalPD_ARI), then averaged
  over clips. fg-ARI keeps only ground-truth foreground pixels (id > 0); all-ARI keeps every pixel.
  The prediction is the argmax over all slots, background slot included.
- F1@50 is VOC-style and micro-averaged over the whole split (DIOD voc_eval): per frame, every
  non-background slot that wins at least one pixel is a prediction scored by its mean soft mask;
  all predictions are sorted by score and each takes its best-IoU ground truth of the same frame,
  a true positive when IoU > 0.5 and that ground truth is still free.
- Error breakdown (ours, for diagnosis; not in DIOD): every ground-truth object that F1@50 misses
  is counted as lost in the background slot, merged with other objects, or other (split, or its
  slot spills into the background), separately for moving and static objects (`miss_cause`).
- With `save_predictions` (CAD.MOTION.SAVE_PREDICTIONS, xMOD main_evaluation.py --save_predictions)
  every frame's slot masks are written to `<output_dir>/predictions/<video>/<frame>.npz`.
All counting is vectorised (contingency tables by `bincount`).
"""
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from cad.evaluation.build import EVALUATOR_REGISTRY
from cad.utils.io import atomic_write_json, atomic_write_npz

logger = logging.getLogger(__name__)


def contingency_table(labels_true: torch.Tensor, labels_pred: torch.Tensor) -> torch.Tensor:
    """Counts of every (true, predicted) label pair: int64 [num_true_labels, num_pred_labels].

    Both inputs hold integer labels of the same N points (any shape, flattened).
    """
    true_ids, true_idx = torch.unique(labels_true.reshape(-1), return_inverse=True)
    pred_ids, pred_idx = torch.unique(labels_pred.reshape(-1), return_inverse=True)
    n_pred = len(pred_ids)
    counts = torch.bincount(true_idx * n_pred + pred_idx, minlength=len(true_ids) * n_pred)
    return counts.reshape(len(true_ids), n_pred)


def adjusted_rand_index(labels_true: torch.Tensor, labels_pred: torch.Tensor) -> float:
    """Adjusted Rand index of two labelings of the same points; equals sklearn's
    `adjusted_rand_score` (pair-confusion form, 1.0 when the two agree on every pair)."""
    if labels_true.numel() != labels_pred.numel():
        raise ValueError(f"label sizes differ: {labels_true.numel()} vs {labels_pred.numel()}")
    n = int(labels_true.numel())
    if n == 0:
        return 1.0
    table = contingency_table(labels_true, labels_pred).to(torch.int64)
    sum_squares = int((table * table).sum())
    rows, cols = table.sum(1), table.sum(0)
    # Pair confusion matrix (ordered pairs), as sklearn.metrics.cluster.pair_confusion_matrix.
    tp = sum_squares - n
    fp = int((table @ cols).sum()) - sum_squares
    fn = int((table.T @ rows).sum()) - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def clip_ari(pred_labels: torch.Tensor, gt_ids: torch.Tensor) -> Dict[str, float]:
    """fg-ARI and all-ARI of one clip: `pred_labels`, `gt_ids` int [T, h, w] (GT 0 = background)."""
    fg = gt_ids > 0
    return {
        "fg_ari": adjusted_rand_index(gt_ids[fg], pred_labels[fg]),
        "all_ari": adjusted_rand_index(gt_ids, pred_labels),
    }


@dataclass
class FramePredictions:
    """Predictions of one frame matched against its ground truth.

    ious: float [P, G] IoU of every prediction with every GT object; scores: float [P];
    gt_moving: bool [G] whether each GT object moves (for the per-category recalls);
    gt_cause: int [G] what happens to each GT object (`miss_cause`), counted when F1@50 misses it.
    """

    ious: np.ndarray
    scores: np.ndarray
    gt_moving: np.ndarray
    gt_cause: np.ndarray


MISS_CAUSES = ("in_background", "merged", "other")
MERGE_SHARE = 0.2


def miss_cause(inter: torch.Tensor, pred_area: torch.Tensor, bg_slot: int) -> torch.Tensor:
    """Index into MISS_CAUSES for every GT object of one frame.

    inter: [K, G] pixels of GT object g won by slot k (every slot, the background one included);
    pred_area: [K] pixels won by each slot. The slot that wins most of an object's pixels decides:
    the background slot -> "in_background"; an object slot with > MERGE_SHARE of its pixels on
    other GT objects -> "merged"; otherwise "other". Returns int64 [G].
    """
    top = inter.argmax(0)
    others = inter.sum(1)[top] - inter.gather(0, top[None])[0]
    cause = torch.where(others > MERGE_SHARE * pred_area[top], 1, 2)
    return torch.where(top == bg_slot, 0, cause).long()


def frame_predictions(
    soft_masks: torch.Tensor, gt_ids: torch.Tensor, bg_slot: int, moving_ids: Sequence[int] = ()
) -> FramePredictions:
    """Slot predictions of one frame vs. its GT objects.

    soft_masks: float [K, h, w] slot masks; gt_ids: int [h, w] (0 = background);
    bg_slot: index of the background slot (never a prediction). A slot is a prediction when it wins
    the argmax on >= 1 pixel; its score is its mean soft mask over those pixels (DIOD voc_eval).
    """
    k = soft_masks.shape[0]
    labels = soft_masks.argmax(0).reshape(-1)
    gt = gt_ids.reshape(-1).long()
    gt_present = torch.unique(gt[gt > 0])
    gt_index = torch.zeros(int(gt.max()) + 1 if gt.numel() else 1, dtype=torch.long)
    gt_index[gt_present] = torch.arange(1, len(gt_present) + 1)
    g = gt_index[gt]  # 0 = background, 1..G
    n_g = len(gt_present) + 1
    inter = torch.bincount(labels * n_g + g, minlength=k * n_g).reshape(k, n_g)[:, 1:].double()
    pred_area = torch.bincount(labels, minlength=k).double()
    gt_area = torch.bincount(g, minlength=n_g)[1:].double()
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, soft_masks.reshape(k, -1).double().gather(0, labels[None])[0])
    keep = pred_area > 0
    keep[bg_slot] = False
    union = pred_area[:, None] + gt_area[None, :] - inter
    ious = (inter / union.clamp(min=1))[keep]
    scores = (sums / pred_area.clamp(min=1))[keep]
    moving = set(int(i) for i in moving_ids)
    gt_moving = np.array([int(i) in moving for i in gt_present.tolist()], dtype=bool)
    return FramePredictions(ious.numpy(), scores.numpy(), gt_moving, miss_cause(inter, pred_area, bg_slot).numpy())


def voc_f1(frames: List[FramePredictions], iou_thresh: float = 0.5, strict: bool = True) -> Dict[str, float]:
    """Micro precision/recall/F1 over all frames with VOC greedy matching.

    Predictions of all frames are sorted by score; each takes its max-IoU GT in its own frame and
    is a TP when IoU > `iou_thresh` (`strict`, DIOD; >= with strict=False, xMOD) and that GT is
    free. Also returns the recall of moving and of static GT objects from the same matching and,
    per category, the share of its objects missed for each of MISS_CAUSES (`missed_static_merged`, ...).
    """
    order = sorted(
        ((s, f, p) for f, fr in enumerate(frames) for p, s in enumerate(fr.scores)), key=lambda t: -t[0]
    )
    taken = [np.zeros(fr.ious.shape[1], bool) for fr in frames]
    tp = 0
    for _, f, p in order:
        ious = frames[f].ious[p]
        if ious.size == 0:
            continue
        j = int(ious.argmax())
        hit = ious[j] > iou_thresh if strict else ious[j] >= iou_thresh
        if hit and not taken[f][j]:
            taken[f][j] = True
            tp += 1
    n_pred = len(order)
    n_gt = sum(fr.ious.shape[1] for fr in frames)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    all_taken = np.concatenate(taken) if taken else np.zeros(0, bool)
    moving = np.concatenate([fr.gt_moving for fr in frames]) if frames else np.zeros(0, bool)
    out = {"precision": precision, "recall": recall, "f1": f1}
    out["recall_moving"] = float(all_taken[moving].mean()) if moving.any() else float("nan")
    out["recall_static"] = float(all_taken[~moving].mean()) if (~moving).any() else float("nan")
    causes = np.concatenate([fr.gt_cause for fr in frames]) if frames else np.zeros(0, np.int64)
    for name, sel in (("moving", moving), ("static", ~moving)):
        for c, cause in enumerate(MISS_CAUSES):
            missed = ~all_taken[sel] & (causes[sel] == c)
            out[f"missed_{name}_{cause}"] = float(missed.mean()) if sel.any() else float("nan")
    return out


def mean_or_nan(values: List[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


class MotionEvaluator(DatasetEvaluator):
    """fg-ARI, all-ARI (per clip, then averaged) and F1@50 (micro) of slot predictions.

    Each input dict holds `gt_masks` int [T, H, W] (instance ids of all objects, 0 = background)
    and optionally `moving_ids` (ids of the moving objects); each output dict holds `masks`
    float [T, K, h, w] (slot masks, the last slot is background). The GT is resized to the mask
    resolution with nearest neighbour. A clip enters ARI only when it has >= `min_objects` GT
    objects (DIOD skips clips with one object; it tests the maximum id, we count present ids).
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, iou_thresh: float = 0.5,
                 strict_iou: bool = True, min_objects: int = 2, save_predictions: bool = False):
        if save_predictions and not output_dir:
            raise ValueError("saving the predictions needs an output folder")
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.save_predictions = save_predictions
        self.iou_thresh = iou_thresh
        self.strict_iou = strict_iou
        self.min_objects = min_objects
        self.reset()

    def reset(self) -> None:
        self._ari: List[Dict[str, float]] = []
        self._frames: List[FramePredictions] = []

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for inp, out in zip(inputs, outputs):
            masks = out["masks"].detach().float().cpu()
            gt = torch.as_tensor(inp["gt_masks"]).long()
            gt = F.interpolate(gt[:, None].float(), size=masks.shape[-2:], mode="nearest")[:, 0].long()
            pred = masks.argmax(1)
            if len(torch.unique(gt[gt > 0])) >= self.min_objects:
                self._ari.append(clip_ari(pred, gt))
            moving = inp.get("moving_ids", ())
            for t in range(masks.shape[0]):
                self._frames.append(frame_predictions(masks[t], gt[t], masks.shape[1] - 1, moving))
            if self.save_predictions:
                self._save(inp, masks)

    def _save(self, inp: Dict, masks: torch.Tensor) -> None:
        """One `predictions/<video>/<frame name>.npz` per frame, 'data' = its masks float [K, h, w]
        (xMOD eval/utils_eval.save_predictions)."""
        for name, frame_masks in zip(inp["file_names"], masks):
            path = Path(self.output_dir) / "predictions" / inp["video"] / f"{Path(name).stem}.npz"
            atomic_write_npz(path, data=frame_masks.numpy())

    def evaluate(self) -> Dict:
        comm.synchronize()
        ari = list(itertools.chain(*comm.gather(self._ari, dst=0)))
        frames = list(itertools.chain(*comm.gather(self._frames, dst=0)))
        if not comm.is_main_process():
            return {}
        f1 = voc_f1(frames, self.iou_thresh, self.strict_iou)
        res = {
            "fg_ari": 100 * mean_or_nan([a["fg_ari"] for a in ari if not np.isnan(a["fg_ari"])]),
            "all_ari": 100 * mean_or_nan([a["all_ari"] for a in ari]),
            "f1_50": 100 * f1["f1"],
            "precision_50": 100 * f1["precision"],
            "recall_50": 100 * f1["recall"],
            "recall_50_moving": 100 * f1["recall_moving"],
            "recall_50_static": 100 * f1["recall_static"],
            **{f"{k}_50": 100 * v for k, v in f1.items() if k.startswith("missed_")},
            "num_clips_ari": len(ari),
            "num_frames": len(frames),
        }
        logger.info("Motion evaluation on %s: %s", self.dataset_name, res)
        if self.output_dir:
            atomic_write_json(f"{self.output_dir}/motion_metrics.json", res)
        return OrderedDict(motion=res)


@EVALUATOR_REGISTRY.register()
def motion(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    """The `motion` evaluator_type: `MotionEvaluator` with cfg.CAD.MOTION.EVAL_* settings."""
    m = cfg.CAD.MOTION
    return MotionEvaluator(dataset_name, output_dir, m.EVAL_IOU, m.EVAL_STRICT_IOU, m.EVAL_MIN_OBJECTS, m.SAVE_PREDICTIONS)


def trivial_baseline_masks(motion_masks: torch.Tensor, num_slots: int, kind: str, stride: int = 4) -> torch.Tensor:
    """Reference predictions for the evidence table, as slot masks [T, K, H/stride, W/stride]:

    - "all_background": every pixel in the background (last) slot;
    - "motion_components": each 4-connected component of the (binary) motion mask of a frame is one
      slot (at most K-1; further components join the last object slot), the rest is background.
    motion_masks int [T, H, W] (0 = static/background).
    """
    from skimage.measure import label as connected_components

    small = F.interpolate(motion_masks[:, None].float(), scale_factor=1 / stride, mode="nearest")[:, 0].long()
    labels = torch.full_like(small, num_slots - 1)
    if kind == "motion_components":
        for t in range(len(small)):
            comp = torch.from_numpy(connected_components((small[t] > 0).numpy(), connectivity=1)).long()
            labels[t][comp > 0] = (comp[comp > 0] - 1).clamp(max=num_slots - 2)
    elif kind != "all_background":
        raise ValueError(f"unknown baseline '{kind}' (all_background, motion_components)")
    return F.one_hot(labels, num_slots).permute(0, 3, 1, 2).float()
