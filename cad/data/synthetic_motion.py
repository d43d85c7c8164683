"""Deterministic generated videos: `synthetic_motion_{train,val}` in the TRI-PD layout.

Each video shows textured shapes over a textured background that pans (camera motion; slowly
except in the `fastcam` splits).
Static shapes are painted on the background and pan with it; moving shapes have their own
velocity, bounce off the frame borders and occlude the static ones. Written per frame:

    synthetic_motion/<split>/scene_XXXXXX/rgb/camera_01/TTTTTT.png        RGB frame
    synthetic_motion/<split>/scene_XXXXXX/est_masks/camera_01/TTTTTT.png  motion mask (ids of moving shapes)
    synthetic_motion/<split>/scene_XXXXXX/ari_masks/camera_01/TTTTTT.png  instance ids of all shapes
    synthetic_motion/<split>/scene_XXXXXX/depth/camera_01/TTTTTT.npz      depth ['data'] (0 = no return: sky)
    synthetic_motion/<split>.json   index (scenes, moving ids, intrinsics), written last = split complete

The xMOD 4-channel range image (x, y, z, range) is projected from the depth by the loader
(`cad.data.motion.range_image_from_depth`), as for TRI-PD.
"""
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np

from cad.data.synthetic import _shape_mask, _texture
from cad.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_npz, atomic_write_png, write_once

logger = logging.getLogger(__name__)

CAMERA = "camera_01"
# Bumped whenever render_video's output changes, so that data generated before is replaced.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class MotionSplit:
    """A generated split: `num_videos` videos of `num_frames` frames of `height`x`width`, with
    `min_static`..`max_static` static and `min_moving`..`max_moving` moving shapes each, and a
    camera that pans `min_pan`..`max_pan` pixels per frame."""

    name: str
    num_videos: int
    num_frames: int
    seed: int
    height: int = 64
    width: int = 128
    min_static: int = 1
    max_static: int = 2
    min_moving: int = 1
    max_moving: int = 3
    min_pan: float = 0.3
    max_pan: float = 1.0


_CROWDED = dict(min_static=2, max_static=4, min_moving=1, max_moving=2)
_FAST_CAMERA = dict(min_pan=1.5, max_pan=3.0)
MOTION_SPLITS = {
    "synthetic_motion_train": MotionSplit("train", num_videos=120, num_frames=20, seed=1),
    "synthetic_motion_val": MotionSplit("val", num_videos=12, num_frames=10, seed=20_000),
    # Crowded scenes (2-4 static and 1-2 moving shapes): most objects are static and often touch.
    # `fastcam`: the camera pans 1.5-3 px/frame, as fast as the moving shapes.
    "synthetic_motion_crowded_train": MotionSplit("crowded_train", num_videos=120, num_frames=20, seed=1, **_CROWDED),
    "synthetic_motion_crowded_val": MotionSplit("crowded_val", num_videos=12, num_frames=10, seed=20_000, **_CROWDED),
    "synthetic_motion_fastcam_train": MotionSplit("fastcam_train", num_videos=120, num_frames=20, seed=1, **_CROWDED, **_FAST_CAMERA),
    "synthetic_motion_fastcam_val": MotionSplit("fastcam_val", num_videos=12, num_frames=10, seed=20_000, **_CROWDED, **_FAST_CAMERA),
    # for tests
    "synthetic_motion_tiny_train": MotionSplit("tiny_train", num_videos=3, num_frames=6, seed=30_000, height=32, width=64),
    "synthetic_motion_tiny_val": MotionSplit("tiny_val", num_videos=2, num_frames=5, seed=40_000, height=32, width=64),
}


def _intrinsics(split: MotionSplit) -> List[List[float]]:
    f = float(split.width)
    return [[f, 0.0, split.width / 2], [0.0, f, split.height / 2], [0.0, 0.0, 1.0]]


# Every object is at least this fraction of the frame height wide and tall (no slivers that vanish at
# the models' stride 4) and its mean colour is at least MIN_CONTRAST away (RGB L2) from the background's.
MIN_EXTENT = 1 / 8
MIN_CONTRAST = 60.0


def _shape(rng: np.random.Generator, split: MotionSplit) -> np.ndarray:
    """A random filled shape cropped to its box: bool [h, w], size ~ 1/6..1/3 of the frame height,
    redrawn until both sides are >= MIN_EXTENT of the frame height."""
    min_side = max(2, int(np.ceil(MIN_EXTENT * split.height)))
    while True:
        size = int(split.height * rng.uniform(0.9, 1.6))
        mask, _ = _shape_mask(rng, size)
        ys, xs = np.nonzero(mask)
        if len(ys) and min(np.ptp(ys), np.ptp(xs)) + 1 >= min_side:
            return mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]


def _object_texture(rng: np.random.Generator, h: int, w: int, background: np.ndarray) -> np.ndarray:
    """`_texture` redrawn until its mean colour differs from `background` (float [3]) by >= MIN_CONTRAST."""
    while True:
        tex = _texture(rng, h, w)
        if np.linalg.norm(tex.reshape(-1, 3).mean(0) - background) >= MIN_CONTRAST:
            return tex


def render_video(split: MotionSplit, index: int) -> Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray], List[int]]:
    """Render video `index` of `split`.

    Returns per frame: RGB uint8 [H, W, 3], instance ids uint8 [H, W] (0 = background),
    depth float32 [H, W] (0 = invalid), and the list of moving instance ids.
    """
    rng = np.random.default_rng([split.seed, index])
    h, w, n = split.height, split.width, split.num_frames
    pan = rng.uniform(split.min_pan, split.max_pan) * rng.choice([-1, 1])  # background pixels per frame
    world_w = w + int(np.ceil(abs(pan) * n)) + 2
    world = _texture(rng, h, world_w)
    background = world.reshape(-1, 3).mean(0)
    world_ids = np.zeros((h, world_w), np.uint8)
    yy = np.arange(h, dtype=np.float32)[:, None]
    horizon = int(0.2 * h)  # rows above are sky (no depth return)
    world_depth = np.broadcast_to(np.where(yy < horizon, 0.0, 4.0 + 60.0 * ((h - yy) / (h - horizon)) ** 2), (h, world_w)).astype(np.float32).copy()
    num_static = int(rng.integers(split.min_static, split.max_static + 1))
    num_moving = int(rng.integers(split.min_moving, split.max_moving + 1))
    start = 0 if pan > 0 else world_w - w
    obj_id = 0
    for _ in range(num_static):  # painted into the world, visible in the first frame
        shape = _shape(rng, split)
        sh, sw = shape.shape
        y0 = int(rng.integers(0, max(1, h - sh)))
        x0 = start + int(rng.integers(0, max(1, w - sw)))
        region = (slice(y0, y0 + sh), slice(x0, x0 + sw))
        shape = shape[: h - y0, : world_w - x0]
        obj_id += 1
        world[region][shape] = _object_texture(rng, *shape.shape, background)[shape]
        world_ids[region][shape] = obj_id
        world_depth[region][shape] = rng.uniform(8, 30)
    movers = []
    for _ in range(num_moving):
        shape = _shape(rng, split)
        sh, sw = shape.shape
        pos = np.array([rng.uniform(0, max(1, h - sh)), rng.uniform(0, max(1, w - sw))])
        speed = rng.uniform(1.5, 3.0)
        angle = rng.uniform(0, 2 * np.pi)
        vel = speed * np.array([0.4 * np.sin(angle), np.cos(angle)])
        obj_id += 1
        movers.append((obj_id, shape, _object_texture(rng, sh, sw, background), pos, vel, rng.uniform(5, 25)))
    frames, ids, depths = [], [], []
    for t in range(n):
        x = int(round(start + pan * t))
        img = world[:, x: x + w].copy()
        idm = world_ids[:, x: x + w].copy()
        dep = world_depth[:, x: x + w].copy()
        for oid, shape, tex, pos, vel, depth in movers:
            sh, sw = shape.shape
            p = pos + vel * t
            for d, limit in ((0, h - sh), (1, w - sw)):  # bounce off the borders
                span = max(limit, 1)
                q = np.mod(p[d], 2 * span)
                p[d] = q if q <= span else 2 * span - q
            y0, x0 = int(p[0]), int(p[1])
            ys, xs = slice(y0, min(h, y0 + sh)), slice(x0, min(w, x0 + sw))
            m = shape[: ys.stop - y0, : xs.stop - x0]
            img[ys, xs][m] = tex[: m.shape[0], : m.shape[1]][m]
            idm[ys, xs][m] = oid
            dep[ys, xs][m] = depth
        img = np.clip(img.astype(np.float32) + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
        frames.append(img)
        ids.append(idm)
        depths.append(dep)
    return frames, ids, depths, [m[0] for m in movers]


def _png_bytes(array: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


def motion_split_dir(name: str, root: Path) -> Tuple[Path, Path]:
    """(split folder, index JSON) of the generated split `name` under dataset `root`."""
    split = MOTION_SPLITS[name]
    base = Path(root) / "synthetic_motion"
    return base / split.name, base / f"{split.name}.json"


def generate_motion(name: str, root: Path) -> Path:
    """Write split `name` under `root/synthetic_motion` unless complete; return its index JSON.

    Frames are written first and the index last (atomically), under a file lock. A split written
    by another GENERATOR_VERSION or with other MotionSplit fields is written again.
    """
    split = MOTION_SPLITS[name]
    folder, index_path = motion_split_dir(name, root)
    generator = {"version": GENERATOR_VERSION, **asdict(split)}
    if index_path.exists() and json.loads(index_path.read_text()).get("generator") != generator:
        logger.info("%s was generated by another generator version or split definition; generating it again", index_path)
        index_path.unlink(missing_ok=True)

    def write() -> None:
        logger.info("Generating %s (%d videos) under %s", name, split.num_videos, folder)
        scenes: List[Dict] = []
        for v in range(split.num_videos):
            frames, ids, depths, moving = render_video(split, v)
            scene = f"scene_{v:06d}"
            for t, (img, idm, dep) in enumerate(zip(frames, ids, depths)):
                stem = f"{t:06d}"
                atomic_write_png(folder / scene / "rgb" / CAMERA / f"{stem}.png", img)
                atomic_write_bytes(folder / scene / "ari_masks" / CAMERA / f"{stem}.png", _png_bytes(idm))
                motion = np.where(np.isin(idm, moving), idm, 0).astype(np.uint8)
                atomic_write_bytes(folder / scene / "est_masks" / CAMERA / f"{stem}.png", _png_bytes(motion))
                atomic_write_npz(folder / scene / "depth" / CAMERA / f"{stem}.npz", data=dep)
            scenes.append({"scene": scene, "num_frames": split.num_frames, "moving_ids": [int(i) for i in moving]})
        atomic_write_json(index_path, {"generator": generator, "scenes": scenes, "intrinsics": _intrinsics(split), "camera": CAMERA})

    return write_once(index_path, write)
