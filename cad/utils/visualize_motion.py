"""Motion-model inference on a split and PNG strips of frames, GT and slot masks."""
import logging
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.colormap import colormap

from cad.data.motion import MotionClipMapper
from cad.evaluation.motion import MotionEvaluator, trivial_baseline_masks
from cad.modeling.motion import RANGE_ARCHS
from cad.utils.io import atomic_write_png

logger = logging.getLogger(__name__)


def _colour(labels: np.ndarray, background: Optional[int]) -> np.ndarray:
    """Label map int [H, W] -> RGB uint8 [H, W, 3]; `background` label drawn black."""
    palette = (colormap(rgb=True, maximum=255)[:, :3]).astype(np.uint8)
    out = palette[labels % len(palette)]
    if background is not None:
        out[labels == background] = 0
    return out


def slot_strip(frames: torch.Tensor, gt: Optional[torch.Tensor], masks: torch.Tensor) -> np.ndarray:
    """One clip as an RGB image: row 1 frames, row 2 GT ids (if given), row 3 slot argmax blended
    over the frames (background slot = dark). frames uint8 [T, 3, H, W]; gt int [T, H, W];
    masks float [T, K, h, w]."""
    t, _, h, w = frames.shape
    k = masks.shape[1]
    imgs = frames.permute(0, 2, 3, 1).numpy()
    labels = torch.nn.functional.interpolate(masks, size=(h, w), mode="nearest").argmax(1).numpy()
    rows = [np.hstack(list(imgs))]
    if gt is not None:
        rows.append(np.hstack([_colour(g.numpy(), 0) for g in gt]))
    blend = [(0.45 * f + 0.55 * _colour(lab, k - 1)).astype(np.uint8) for f, lab in zip(imgs, labels)]
    rows.append(np.hstack(blend))
    return np.vstack(rows)


@torch.no_grad()
def predict_clip_dicts(model: torch.nn.Module, cfg, clips: Iterable[Dict]) -> List[Dict]:
    """Run `model` (eval mode) on clip dicts (`cad.data.motion` format, `clip_start` >= 0);
    returns per clip {"input": mapped dict, "output": {"masks", "fg"}}."""
    mapper = MotionClipMapper(cfg, is_train=False, with_range=cfg.MODEL.META_ARCHITECTURE in RANGE_ARCHS)
    model.eval()
    out = []
    for d in clips:
        inp = mapper(d)
        out.append({"input": inp, "output": model([inp])[0]})
    return out


def predict_clips(model: torch.nn.Module, cfg, dataset: str, num_clips: Optional[int] = None) -> List[Dict]:
    """`predict_clip_dicts` on the first `num_clips` clips of the split `dataset`."""
    return predict_clip_dicts(model, cfg, DatasetCatalog.get(dataset)[:num_clips])


def write_strips(results: List[Dict], out_dir: Path) -> List[Path]:
    """One PNG per clip under `out_dir`; returns their paths."""
    paths = []
    for i, r in enumerate(results):
        inp = r["input"]
        strip = slot_strip(inp["image"], inp.get("gt_masks"), r["output"]["masks"].cpu())
        path = Path(out_dir) / f"clip_{i:03d}.png"
        strip = cv2.resize(strip, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        atomic_write_png(path, strip)
        paths.append(path)
    return paths


def evaluate_baselines(cfg, dataset: str) -> Dict[str, Dict]:
    """Motion metrics of the trivial baselines (all-background, one slot per connected motion
    component) on `dataset`, with the model's slot count and stride-4 resolution."""
    mapper = MotionClipMapper(cfg, is_train=False)
    clips = [mapper(d) for d in DatasetCatalog.get(dataset)]
    res = {}
    for kind in ("all_background", "motion_components"):
        ev = MotionEvaluator(dataset, None, cfg.CAD.MOTION.EVAL_IOU, cfg.CAD.MOTION.EVAL_STRICT_IOU, cfg.CAD.MOTION.EVAL_MIN_OBJECTS)
        for c in clips:
            if "motion_masks" not in c:
                raise ValueError(f"dataset '{dataset}' has no motion masks for the motion_components baseline")
            ev.process([c], [{"masks": trivial_baseline_masks(c["motion_masks"], cfg.CAD.MOTION.NUM_SLOTS, kind)}])
        res[kind] = ev.evaluate()["motion"]
    return res
