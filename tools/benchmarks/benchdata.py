"""Generated data at the papers' sizes for the loader and GPU benchmarks (data_throughput.py, gpu_check.py).

- `write_instance_coco`: JPEG photos-like images (textured background and objects) with K instance
  masks each (compressed RLE, a soft `score` per mask, as VoteCut/MaskCut pseudo-labels), registered
  as a class-agnostic COCO split.
- `write_tri_pd`: videos in the TRI-PD layout that `tri_pd_train` reads (`rgb`, `est_masks`,
  `depth` per camera, `calibration.json`), rendered by cad's synthetic-motion generator.
"""
import json
from pathlib import Path

import cv2
import numpy as np
from detectron2.data import DatasetCatalog

from cad.data.coco import register_class_agnostic_coco
from cad.data.synthetic import _shape_mask, _texture
from cad.data.synthetic_motion import CAMERA, MotionSplit, _intrinsics, _npz_bytes, _png_bytes, render_video
from cad.utils.io import atomic_write_bytes, atomic_write_json
from cad.utils.masks import encode_mask


def _object_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random filled shape (height, width) bool, 1/10-1/2 of the longer side across, never empty."""
    side = max(height, width)
    while True:
        mask = _shape_mask(rng, side)[0][:height, :width]
        if mask.any():
            return mask


def write_instance_coco(folder: Path, name: str, num_images: int, height: int, width: int, masks_per_image: int,
                        seed: int = 0) -> str:
    """Write `num_images` JPEGs of `height` x `width` with `masks_per_image` masks each under `folder`
    and register them as the class-agnostic COCO split `name` (returned)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image = _texture(rng, height, width)
        for _ in range(masks_per_image):
            mask = _object_mask(rng, height, width)
            image[mask] = _texture(rng, height, width)[mask]
            x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "bbox": [x, y, w, h], "area": int(mask.sum()), "segmentation": encode_mask(mask),
                                "score": float(rng.uniform(0.2, 1.0))})
        file_name = f"{image_id:06d}.jpg"
        ok, jpg = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok, "JPEG encoding failed"
        atomic_write_bytes(folder / "images" / file_name, jpg.tobytes())
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    atomic_write_json(folder / "annotations.json", {"images": images, "annotations": annotations,
                                                    "categories": [{"id": 1, "name": "object"}]})
    return register_instance_coco(folder, name)


def register_instance_coco(folder: Path, name: str) -> str:
    """Register the split `write_instance_coco` wrote in `folder` as `name` (in each process)."""
    if name not in DatasetCatalog.list():
        register_class_agnostic_coco(name, Path(folder) / "annotations.json", Path(folder) / "images", section="benchmark data")
    return name


def write_tri_pd(root: Path, num_videos: int, num_frames: int, height: int, width: int, seed: int = 0) -> Path:
    """Videos of `num_frames` frames of `height` x `width` in the TRI-PD training layout under
    `root/tri_pd/train` (the `tri_pd_train` split reads them when $DETECTRON2_DATASETS is `root`)."""
    split = MotionSplit("benchmark", num_videos=num_videos, num_frames=num_frames, seed=seed, height=height, width=width)
    base = Path(root) / "tri_pd" / "train"
    for v in range(num_videos):
        scene = base / f"scene_{v:06d}"
        frames, ids, depths, moving = render_video(split, v)
        for t, (img, idm, dep) in enumerate(zip(frames, ids, depths)):
            stem = f"{t:06d}"
            atomic_write_bytes(scene / "rgb" / CAMERA / f"{stem}.png", _png_bytes(img[:, :, ::-1]))
            motion = np.where(np.isin(idm, moving), idm, 0).astype(np.uint8)
            atomic_write_bytes(scene / "est_masks" / CAMERA / f"{stem}.png", _png_bytes(motion))
            atomic_write_bytes(scene / "depth" / CAMERA / f"{stem}.npz", _npz_bytes(dep))
        (scene / "calibration.json").write_text(json.dumps({CAMERA: {"K": _intrinsics(split)}}))
    return base
