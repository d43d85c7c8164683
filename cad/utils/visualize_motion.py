"""Motion-model inference on a split: PNG strips of frames, GT and slot masks, and captioned
comparison videos (DIOD create_mp4.py: panels side by side with a caption each, 5 fps)."""
import logging
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

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


def clip_panels(frames: torch.Tensor, gt: Optional[torch.Tensor], masks: torch.Tensor) -> Dict[str, List[np.ndarray]]:
    """Per frame RGB uint8 [H, W, 3] images: "frames", "gt" (ids coloured, background black; only
    when `gt` is given) and "slots" (slot argmax at the frame size blended over the frame, the
    background slot dark). frames uint8 [T, 3, H, W]; gt int [T, H, W]; masks float [T, K, h, w]."""
    _, _, h, w = frames.shape
    k = masks.shape[1]
    imgs = list(frames.permute(0, 2, 3, 1).numpy())
    labels = torch.nn.functional.interpolate(masks.float(), size=(h, w), mode="nearest").argmax(1).numpy()
    out = {"frames": imgs, "slots": [(0.45 * f + 0.55 * _colour(lab, k - 1)).astype(np.uint8) for f, lab in zip(imgs, labels)]}
    if gt is not None:
        out["gt"] = [_colour(g.numpy(), 0) for g in gt]
    return out


def slot_strip(frames: torch.Tensor, gt: Optional[torch.Tensor], masks: torch.Tensor) -> np.ndarray:
    """One clip as an RGB image: row 1 frames, row 2 GT ids (if given), row 3 slot argmax blended
    over the frames (background slot = dark). Shapes as `clip_panels`."""
    panels = clip_panels(frames, gt, masks)
    return np.vstack([np.hstack(panels[key]) for key in ("frames", "gt", "slots") if key in panels])


# create_mp4.py: white canvas, 10 px between panels, a caption line above each panel
MARGIN, CAPTION_HEIGHT, MIN_PANEL_WIDTH = 10, 30, 320


def captioned_row(images: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
    """RGB uint8 panels of one size side by side on white, each under its caption (black, centred,
    shrunk to fit); panels smaller than 320 px wide are enlarged by an integer factor (nearest).
    The result has even sides (video encoders need them)."""
    h, w = images[0].shape[:2]
    scale = max(1, math.ceil(MIN_PANEL_WIDTH / w))
    width = len(images) * w * scale + (len(images) - 1) * MARGIN
    height = CAPTION_HEIGHT + h * scale
    canvas = np.full((height + height % 2, width + width % 2, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, (img, caption) in enumerate(zip(images, captions)):
        x0 = i * (w * scale + MARGIN)
        canvas[CAPTION_HEIGHT:height, x0:x0 + w * scale] = cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        size = 0.7
        text_w, text_h = cv2.getTextSize(caption, font, size, 2)[0]
        if text_w > w * scale:
            size *= w * scale / text_w
            text_w, text_h = cv2.getTextSize(caption, font, size, 2)[0]
        org = (x0 + (w * scale - text_w) // 2, (CAPTION_HEIGHT + text_h) // 2)
        cv2.putText(canvas, caption, org, font, size, (0, 0, 0), 2 if size >= 0.5 else 1, cv2.LINE_AA)
    return canvas


def comparison_frames(results: List[Dict], method: str) -> List[np.ndarray]:
    """The frames of one video's comparison movie: for each frame of each predicted clip (in the
    given order) the panels "Input", "Ground truth" (GT masks, else motion masks, if the clip has
    any) and "<method> slots", captioned (`captioned_row`)."""
    out = []
    for r in results:
        inp = r["input"]
        gt = inp.get("gt_masks", inp.get("motion_masks"))
        panels = clip_panels(inp["image"], gt, r["output"]["masks"].cpu())
        keys = ["frames", "gt", "slots"] if gt is not None else ["frames", "slots"]
        captions = {"frames": "Input", "gt": "Ground truth" if "gt_masks" in inp else "Motion masks", "slots": f"{method} slots"}
        for t in range(len(panels["frames"])):
            out.append(captioned_row([panels[k][t] for k in keys], [captions[k] for k in keys]))
    return out


def write_video(frames: Sequence[np.ndarray], path: Path, fps: float = 5.0) -> Path:
    """Encode RGB uint8 frames of one size as an MPEG-4 video (OpenCV's FFmpeg writer, fourcc
    mp4v), written to a temporary file next to `path` and renamed; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    try:
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write an mp4v video to {path} (no FFmpeg video I/O in this OpenCV build?)")
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        writer.release()
        os.replace(tmp, path)
    finally:
        writer.release()
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_videos(results: List[Dict], out_dir: Path, method: str, fps: float = 5.0) -> List[Path]:
    """One captioned comparison video per source video under `out_dir` (its clips in frame
    order), named after the video (`/` -> `_`); returns their paths."""
    videos: Dict[str, List[Dict]] = defaultdict(list)
    for r in results:
        videos[r["input"]["video"]].append(r)
    paths = []
    for name, clips in videos.items():
        clips = sorted(clips, key=lambda r: r["input"]["clip_start"])
        paths.append(write_video(comparison_frames(clips, method), Path(out_dir) / f"{name.replace('/', '_')}.mp4", fps))
    return paths


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
