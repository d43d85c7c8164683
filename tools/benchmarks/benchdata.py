"""Generated data at the papers' sizes for the loader and GPU benchmarks (data_throughput.py, gpu_check.py).

- `write_instance_coco`: JPEG photos-like images (textured background and objects) with K instance
  masks each (compressed RLE, a soft `score` per mask, as VoteCut/MaskCut pseudo-labels), registered
  as a class-agnostic COCO split.
- `write_tri_pd`: videos in the official TRI-PD layout that `tri_pd_train` reads (`rgb`,
  `est_masks`, `depth` per camera, the DGP calibration file), rendered by cad's synthetic-motion
  generator.
"""
from pathlib import Path

import cv2
import numpy as np
from detectron2.data import DatasetCatalog

from cad.data.coco import register_class_agnostic_coco
from cad.data.motion import XMOD_PD_CALIBRATION
from cad.data.synthetic import _shape_mask, _texture
from cad.data.synthetic_motion import CAMERA, MotionSplit, render_video
from cad.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_npz, atomic_write_png
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


def _write_ids(path: Path, ids: np.ndarray) -> None:
    """An id mask (H, W) as a single-channel PNG, atomically."""
    ok, png = cv2.imencode(".png", ids.astype(np.uint8))
    assert ok, "PNG encoding failed"
    atomic_write_bytes(path, png.tobytes())


def write_tri_pd(root: Path, num_videos: int, num_frames: int, height: int, width: int, seed: int = 0) -> Path:
    """`num_videos` training videos of `num_frames` frames of `height` x `width` in TRI-PD's official
    layout under `root/tri_pd/train` (`tri_pd_train` reads them when $DETECTRON2_DATASETS is `root`):
    an empty `scene_000000` (DIOD/xMOD train from the second scene), then per scene `rgb`,
    `est_masks` and `depth` of `camera_01` and the DGP calibration file."""
    split = MotionSplit("benchmark", num_videos=num_videos, num_frames=num_frames, seed=seed, height=height, width=width)
    base = Path(root) / "tri_pd" / "train"
    (base / "scene_000000").mkdir(parents=True, exist_ok=True)
    f = float(width)  # the synthetic-motion generator's camera: focal = width, centred
    calibration = {"names": [CAMERA], "intrinsics": [{"fx": f, "fy": f, "cx": width / 2, "cy": height / 2}]}
    for v in range(num_videos):
        scene = base / f"scene_{v + 1:06d}"
        frames, ids, depths, moving = render_video(split, v)
        for t, (img, idm, dep) in enumerate(zip(frames, ids, depths)):
            stem = f"{t:06d}"
            atomic_write_png(scene / "rgb" / CAMERA / f"{stem}.png", img)
            _write_ids(scene / "est_masks" / CAMERA / f"{stem}.png", np.where(np.isin(idm, moving), idm, 0))
            atomic_write_npz(scene / "depth" / CAMERA / f"{stem}.npz", data=dep)
        atomic_write_json(scene / "calibration" / f"{XMOD_PD_CALIBRATION}", calibration)
    return base
