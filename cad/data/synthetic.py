"""Deterministic generated data: `synthetic_shapes_{train,val}`.

Each image shows 2–5 textured shapes (ellipses, polygons, rotated rectangles) that occlude
each other, on a textured background. Annotations are COCO JSON with the *visible* instance
masks as compressed RLE. The data are written on first use under
`$DETECTRON2_DATASETS/synthetic` and are identical for a given split, size and seed.
"""
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from cad.data.coco import load_class_agnostic_coco
from cad.utils.io import atomic_write_json, atomic_write_png, write_once
from cad.utils.masks import encode_mask

logger = logging.getLogger(__name__)

CATEGORIES = [
    {"id": 1, "name": "ellipse"},
    {"id": 2, "name": "polygon"},
    {"id": 3, "name": "rectangle"},
]


@dataclass(frozen=True)
class ShapesSplit:
    """A generated split: `num_images` images of `size`×`size` pixels, seeded by `seed`."""

    name: str
    num_images: int
    seed: int
    size: int = 256
    min_shapes: int = 2
    max_shapes: int = 5
    min_visible_area: int = 80  # pixels; smaller visible parts are not annotated


SHAPES_SPLITS = {
    "synthetic_shapes_train": ShapesSplit("shapes_train", num_images=400, seed=0),
    "synthetic_shapes_val": ShapesSplit("shapes_val", num_images=100, seed=10_000),
    # Small splits for fast tests.
    "synthetic_shapes_tiny_train": ShapesSplit("shapes_tiny_train", num_images=16, seed=20_000, size=128),
    "synthetic_shapes_tiny_val": ShapesSplit("shapes_tiny_val", num_images=8, seed=30_000, size=128),
}
# multi-class registrations of the same generated data (Mask2Former / Guided Distillation)
SHAPES_MULTICLASS_SPLITS = {
    "synthetic_shapes_multiclass_train": "synthetic_shapes_train",
    "synthetic_shapes_multiclass_val": "synthetic_shapes_val",
}
SHAPES_MULTICLASS_METADATA = {
    "thing_classes": [c["name"] for c in CATEGORIES],
    "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(CATEGORIES)},
}


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random texture (h, w, 3) uint8: smooth colour noise, optionally with stripes."""
    base = rng.uniform(0, 255, size=3)
    coarse = rng.normal(0, 1, size=(max(2, h // 32), max(2, w // 32), 3))
    noise = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    tex = base + noise * rng.uniform(10, 40)
    if rng.random() < 0.5:
        period = rng.uniform(6, 24)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
        tex = tex + (np.sin(phase)[..., None] * rng.uniform(10, 35) * rng.choice([-1, 1], size=3))
    tex = tex + rng.normal(0, 4, size=(h, w, 3))
    return np.clip(tex, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, int]:
    """One random filled shape: (mask (size, size) bool, COCO category id)."""
    mask = np.zeros((size, size), np.uint8)
    cx, cy = rng.uniform(0.15, 0.85, size=2) * size
    radius = rng.uniform(0.08, 0.25) * size
    kind = int(rng.integers(1, 4))
    if kind == 1:
        axes = (int(radius), int(radius * rng.uniform(0.5, 1.0)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 2:
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = radius * rng.uniform(0.6, 1.0, size=n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    else:
        box = ((float(cx), float(cy)), (2 * radius, 2 * radius * rng.uniform(0.4, 1.0)), float(rng.uniform(0, 90)))
        cv2.fillPoly(mask, [cv2.boxPoints(box).astype(np.int32)], 1)
    return mask.astype(bool), kind


def render_image(split: ShapesSplit, index: int) -> Tuple[np.ndarray, List[Tuple[np.ndarray, int]]]:
    """Render image `index` of `split`.

    Returns the RGB image (size, size, 3) uint8 and a list of (visible mask (size, size) bool,
    category id) in back-to-front order; hidden or tiny instances are dropped.
    """
    rng = np.random.default_rng([split.seed, index])
    s = split.size
    image = _texture(rng, s, s)
    masks: List[Tuple[np.ndarray, int]] = []
    for _ in range(int(rng.integers(split.min_shapes, split.max_shapes + 1))):
        shape, kind = _shape_mask(rng, s)
        image[shape] = _texture(rng, s, s)[shape]
        masks = [(m & ~shape, k) for m, k in masks]
        masks.append((shape, kind))
    return image, [(m, k) for m, k in masks if m.sum() >= split.min_visible_area]


def _annotations(masks: List[Tuple[np.ndarray, int]], image_id: int, first_ann_id: int) -> List[Dict]:
    anns = []
    for i, (mask, kind) in enumerate(masks):
        rle = encode_mask(mask)
        anns.append(
            {
                "id": first_ann_id + i,
                "image_id": image_id,
                "category_id": kind,
                "segmentation": rle,
                "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return anns


def split_paths(name: str, root: Path) -> Tuple[Path, Path]:
    """(image folder, annotation JSON) of the generated split `name` under dataset `root`."""
    split = SHAPES_SPLITS[name]
    base = Path(root) / "synthetic"
    return base / split.name, base / "annotations" / f"{split.name}.json"


def generate_shapes(name: str, root: Path) -> Path:
    """Write split `name` under `root/synthetic` unless complete; return its JSON path.

    Images are written first, the JSON last (atomically), so a JSON on disk means a complete
    split. Safe to call from several processes at once (file lock).
    """
    split = SHAPES_SPLITS[name]
    image_dir, json_path = split_paths(name, root)

    def write() -> None:
        logger.info("Generating %s (%d images) under %s", name, split.num_images, image_dir)
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(split.num_images):
            image, masks = render_image(split, index)
            file_name = f"{index:06d}.png"
            atomic_write_png(image_dir / file_name, image)
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": split.size, "height": split.size})
            annotations += _annotations(masks, image_id, len(annotations) + 1)
        atomic_write_json(json_path, {"images": images, "annotations": annotations, "categories": CATEGORIES})

    return write_once(json_path, write)


def load_shapes_multiclass(name: str, root: Path, split: str) -> List[Dict]:
    """Dataset dicts of generated split `split` registered as `name` with its 3 categories
    (ellipse, polygon, rectangle -> contiguous 0, 1, 2)."""
    from detectron2.data.datasets import load_coco_json

    json_path = generate_shapes(split, root)
    image_dir, _ = split_paths(split, root)
    return load_coco_json(str(json_path), str(image_dir), dataset_name=name)


def load_shapes(name: str, root: Path) -> List[Dict]:
    """Dataset dicts of a generated split under `root` (generated on first use), class-agnostic."""
    json_path = generate_shapes(name, root)
    image_dir, _ = split_paths(name, root)
    return load_class_agnostic_coco(json_path, image_dir, name, "Synthetic data")
