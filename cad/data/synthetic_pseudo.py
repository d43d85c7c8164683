"""`synthetic_shapes_train_pseudo`: noisy pseudo-masks with soft scores for the CPU demo.

The ground truth of `synthetic_shapes_train` degraded the way discovered pseudo-masks are wrong
(`degrade_masks`): objects are missed, masks are dilated, eroded or shifted, and spurious masks
appear on the background. Each pseudo-mask gets a soft `score` that correlates with its quality,
normalised so the best mask of an image scores 1.0 (as VoteCut's cluster_size / max). The JSON is
generated deterministically (seeded per image) on first use under
`$DETECTRON2_DATASETS/synthetic/annotations/shapes_train_pseudo.json`; the images are those of
`synthetic_shapes_train`. `synthetic_shapes_tiny_train_pseudo` does the same for the tiny test split.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.data.coco import CLASS_AGNOSTIC_METADATA, load_class_agnostic_coco
from cad.data.synthetic import generate_shapes, split_paths
from cad.utils.io import atomic_write_json, write_once
from cad.utils.masks import decode_mask, encode_mask

# pseudo-label split -> generated split whose ground truth it degrades (the tiny one is for tests)
PSEUDO_SPLITS = {
    "synthetic_shapes_train_pseudo": "synthetic_shapes_train",
    "synthetic_shapes_tiny_train_pseudo": "synthetic_shapes_tiny_train",
}


@dataclass(frozen=True)
class Degradation:
    """How ground-truth masks are turned into pseudo-masks (probabilities are per object)."""

    seed: int = 1234
    drop: float = 0.25  # object missed by the discovery method
    morph: float = 0.5  # mask dilated or eroded (kernel 3..9 px)
    shift: float = 0.3  # mask shifted by up to 8 px
    max_spurious: int = 2  # 0..max_spurious background blobs per image
    score_noise: float = 0.1  # std of the noise added to mask IoU to make the score


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def degrade_masks(
    gt_masks: List[np.ndarray], shape: Tuple[int, int], rng: np.random.Generator, cfg: Degradation = Degradation()
) -> List[Tuple[np.ndarray, float]]:
    """Pseudo-masks from the (H, W) = `shape` bool ground-truth masks of one image.

    Returns [(mask (H, W) bool, score in (0, 1])]: kept objects (possibly dilated/eroded/shifted)
    scored by IoU with their true mask plus noise, and spurious blobs scored U(0.05, 0.4);
    scores are divided by the image's maximum. Empty masks are left out.
    """
    out: List[Tuple[np.ndarray, float]] = []
    for gt in gt_masks:
        if rng.random() < cfg.drop:
            continue
        m = gt.astype(np.uint8)
        if rng.random() < cfg.morph:
            k = int(rng.integers(1, 5)) * 2 + 1
            kernel = np.ones((k, k), np.uint8)
            m = cv2.dilate(m, kernel) if rng.random() < 0.5 else cv2.erode(m, kernel)
        if rng.random() < cfg.shift:
            dx, dy = rng.integers(-8, 9, size=2)
            m = cv2.warpAffine(m, np.float32([[1, 0, dx], [0, 1, dy]]), (m.shape[1], m.shape[0]))
        m = m.astype(bool)
        if m.any():
            out.append((m, float(np.clip(_iou(m, gt) + rng.normal(0, cfg.score_noise), 0.05, 1.0))))
    h, w = shape
    for _ in range(int(rng.integers(0, cfg.max_spurious + 1))):
        blob = np.zeros((h, w), np.uint8)
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(8, w // 5)), int(rng.integers(8, h // 5)))
        cv2.ellipse(blob, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        out.append((blob.astype(bool), float(rng.uniform(0.05, 0.4))))
    top = max((s for _, s in out), default=1.0)
    return [(m, s / top) for m, s in out]


def pseudo_json_path(source: str, root: Path) -> Path:
    """`<root>/synthetic/annotations/<source folder>_pseudo.json`."""
    _, gt_json = split_paths(source, root)
    return gt_json.with_name(gt_json.stem + "_pseudo.json")


def generate_pseudo_shapes(source: str, root: Path, cfg: Degradation = Degradation()) -> Path:
    """Write the pseudo-label JSON of generated split `source` under `root` unless present."""
    out = pseudo_json_path(source, root)

    def write() -> None:
        gt = load_class_agnostic_coco(generate_shapes(source, root), split_paths(source, root)[0], source, "Synthetic data")
        images, annotations = [], []
        for record in gt:
            image_id = record["image_id"]
            images.append({"id": image_id, "file_name": Path(record["file_name"]).name,
                           "width": record["width"], "height": record["height"]})
            masks = [decode_mask(a["segmentation"]) for a in record["annotations"]]
            rng = np.random.default_rng([cfg.seed, image_id])
            for mask, score in degrade_masks(masks, (record["height"], record["width"]), rng, cfg):
                rle = encode_mask(mask)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "segmentation": rle,
                    "area": float(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0, "score": round(score, 4),
                })
        atomic_write_json(out, {"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]})

    return write_once(out, write)


def load_pseudo_shapes(name: str, root: Path) -> List[Dict]:
    """Dataset dicts of pseudo-label split `name` (JSON generated on first use)."""
    source = PSEUDO_SPLITS[name]
    return load_class_agnostic_coco(generate_pseudo_shapes(source, root), split_paths(source, root)[0], name, "Synthetic data")


def register_pseudo_shapes(root: Path) -> None:
    """Register the `PSEUDO_SPLITS` (generated on first load, never at registration)."""
    for name in PSEUDO_SPLITS:
        DatasetCatalog.register(name, lambda name=name: load_pseudo_shapes(name, root))
        MetadataCatalog.get(name).set(evaluator_type="class_agnostic", **CLASS_AGNOSTIC_METADATA)
