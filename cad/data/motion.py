"""Video-clip datasets for DIOD / xMOD: TRI-PD, KITTI and the generated synthetic_motion.

A dataset dict describes one video (training: the mapper draws a random clip) or one fixed
clip (evaluation, `clip_start` >= 0):

    video: str, frames: [path], motion_masks: {supervision: [path]} | None (supervision "est",
    "moving", "all": CAD.MOTION.SUPERVISION picks one), gt_masks: [path] | None,
    depth: [path] | None (TRI-PD-style dense depth .npz['data']), velodyne: [path] | None (KITTI .bin),
    calib: dict (K 3x3 for depth; velo_to_cam 3x4, R_rect 3x3, P_rect 3x4 for velodyne),
    moving_ids: [int] (synthetic only), clip_start: int (-1 = random), clip_length: int,
    crop_top: float (fraction of rows removed at the top before resizing; TRI-PD 256/1216),
    gt_min_fraction: float (TRI-PD test: ground-truth ids count once they cover more of a frame,
    `TRI_PD_GT_MIN_FRACTION`),
    height, width: model input size (filled by the mapper).
See datasets/README.md, sections "TRI-PD", "KITTI" and "Synthetic data".
"""
import json
import logging
import random
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.config import ConfigError
from cad.data.mapper import CorruptImageError, skip_unreadable
from cad.data.paths import README, DatasetMissingError, require
from cad.data.synthetic_motion import MOTION_SPLITS, generate_motion, motion_split_dir

logger = logging.getLogger(__name__)

# xMOD range-image normalisation of (x, y, z, range) in camera coordinates (metres).
RANGE_MIN = np.array([-52.0, -4.0, 1.0, 2.0], np.float32)
RANGE_MAX = np.array([53.0, 15.0, 70.0, 80.0], np.float32)
MAX_DEPTH = 70.0
TRI_PD_CROP_TOP = 256 / 1216  # x0.5 resize then 128 rows cropped (DIOD datasetPD)
KITTI_MAX_DRIVES, KITTI_EVAL_DRIVES = 151, 5


def normalise_points(xyz: np.ndarray) -> np.ndarray:
    """Camera-frame points float [..., 3] -> xMOD channels (x, y, z, range) in [1e-3, 1-1e-3]."""
    rng = np.linalg.norm(xyz, axis=-1, keepdims=True)
    v = (np.concatenate([xyz, rng], -1) - RANGE_MIN) / (RANGE_MAX - RANGE_MIN)
    return np.clip(v, 1e-3, 1 - 1e-3).astype(np.float32)


def range_image_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Back-project a depth map float [H, W] (0 = invalid) with intrinsics K [3, 3] into the
    4-channel front-view image float [4, H, W]; invalid pixels (depth <= 0 or > 70 m) are 0."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    z = depth.astype(np.float32)
    xyz = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], -1)
    out = normalise_points(xyz)
    valid = (z > 0) & (z <= MAX_DEPTH)
    return (out * valid[..., None]).transpose(2, 0, 1)


def range_image_from_points(points_cam: np.ndarray, P: np.ndarray, height: int, width: int) -> np.ndarray:
    """Splat rectified camera-frame points float [N, 3] into a [4, H, W] image with projection P
    [3, 4]; the nearest point wins a pixel (z-buffer); empty pixels are 0."""
    uvw = np.c_[points_cam, np.ones(len(points_cam), np.float32)] @ P.T
    z = uvw[:, 2]
    keep = z > 1e-3
    uv = np.floor(uvw[keep, :2] / z[keep, None]).astype(np.int64)
    pts = np.minimum(points_cam[keep], [np.inf, np.inf, MAX_DEPTH])
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    uv, pts = uv[inside], pts[inside]
    order = np.argsort(-pts[:, 2])  # far to near: the last (nearest) write wins
    img = np.zeros((height, width, 4), np.float32)
    img[uv[order, 1], uv[order, 0]] = normalise_points(pts[order])
    return img.transpose(2, 0, 1)


def read_kitti_calib(path: Path) -> Dict[str, np.ndarray]:
    """`key: v v v ...` lines of a KITTI calibration file as float arrays."""
    out = {}
    for line in Path(path).read_text().splitlines():
        key, _, values = line.partition(":")
        try:
            out[key.strip()] = np.array([float(x) for x in values.split()], np.float32)
        except ValueError:
            continue
    return out


def velodyne_to_rect(points: np.ndarray, calib: Dict) -> np.ndarray:
    """KITTI velodyne points float [N, >=3] -> rectified camera-0 coordinates [N, 3]; keeps
    points more than 2 m in front of the sensor (xMOD: velo x > 2)."""
    pts = points[points[:, 0] > 2, :3]
    cam = pts @ np.asarray(calib["velo_to_cam"])[:, :3].T + np.asarray(calib["velo_to_cam"])[:, 3]
    return (cam @ np.asarray(calib["R_rect"]).T).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Dataset dicts


def _video_dict(video: str, frames: List[Path], motion: Optional[Dict[str, List[Path]]], gt: Optional[List[Path]],
                **extra) -> Dict:
    return {
        "video": video,
        "frames": [str(p) for p in frames],
        "motion_masks": {kind: [str(p) for p in paths] for kind, paths in motion.items()} if motion else None,
        "gt_masks": [str(p) for p in gt] if gt else None,
        "depth": None, "velodyne": None, "calib": None, "moving_ids": [],
        "clip_start": -1, "crop_top": 0.0, **extra,
    }


def split_into_clips(videos: List[Dict], clip_length: int) -> List[Dict]:
    """Evaluation: every video cut into consecutive non-overlapping clips (DIOD evalPD_ARI)."""
    clips = []
    for v in videos:
        for start in range(0, len(v["frames"]) - clip_length + 1, clip_length):
            clips.append({**v, "clip_start": start, "clip_length": clip_length})
    return clips


def load_synthetic_motion(name: str, root: Path, clip_length: int = 5) -> List[Dict]:
    """Dataset dicts of a generated split (generated on first use); val splits are cut into clips.
    The generated motion masks are exact, so they serve as both "est" and "moving" supervision."""
    index = json.loads(generate_motion(name, root).read_text())
    folder, _ = motion_split_dir(name, root)
    cam = index["camera"]
    videos = []
    for s in index["scenes"]:
        stems = [f"{t:06d}" for t in range(s["num_frames"])]
        d = folder / s["scene"]
        est = [d / "est_masks" / cam / f"{t}.png" for t in stems]
        ari = [d / "ari_masks" / cam / f"{t}.png" for t in stems]
        videos.append(_video_dict(
            f"{MOTION_SPLITS[name].name}/{s['scene']}",
            [d / "rgb" / cam / f"{t}.png" for t in stems], {"est": est, "moving": est, "all": ari}, ari,
            depth=[str(d / "depth" / cam / f"{t}.npz") for t in stems],
            calib={"K": index["intrinsics"]}, moving_ids=s["moving_ids"], clip_length=clip_length,
        ))
    return videos if name.endswith("_train") else split_into_clips(videos, clip_length)


# DIOD datasetPD.py:13 `banned_scenes` (also xMOD dataloaders/PD_dataset.BANNED_SCENES): TRI-PD training
# scenes both official loaders skip (scene_000100 is listed twice there).
TRI_PD_BANNED_SCENES = frozenset([
    "scene_000100", "scene_000002", "scene_000008", "scene_000012", "scene_000018", "scene_000029", "scene_000038",
    "scene_000040", "scene_000043", "scene_000044", "scene_000049", "scene_000050", "scene_000053", "scene_000063",
    "scene_000079", "scene_000090", "scene_000094", "scene_000103", "scene_000106", "scene_000111", "scene_000112",
    "scene_000124", "scene_000125", "scene_000127", "scene_000148", "scene_000159", "scene_000166", "scene_000169",
    "scene_000170", "scene_000171", "scene_000187", "scene_000191", "scene_000200", "scene_000202", "scene_000217",
    "scene_000218", "scene_000225", "scene_000229", "scene_000232", "scene_000236", "scene_000237", "scene_000245",
    "scene_000249",
])
# Training mask folders of a TRI-PD scene per CAD.MOTION.SUPERVISION (DIOD datasetPD.py, xMOD PD_dataset.py).
TRI_PD_SUPERVISION = {"est": "est_masks", "moving": "moving_masks", "all": "ari_masks"}
# The calibration file xMOD's PD_dataset.py reads (the same DGP calibration in every scene it was run on).
XMOD_PD_CALIBRATION = "f7ac1d5879108bf162666fa9836d1f9ea712a35f.json"
# TRI-PD test ground truth: ids covering at most this fraction of a frame are background until they get
# bigger (DIOD datasetPDEval.py, xMOD PDDatasetEval: `_remap_mask(mask, threshold=500)` on 480x968 frames,
# persistent mapping).
TRI_PD_GT_MIN_FRACTION = 500 / (480 * 968)
# First training scene of the sorted TRI-PD training folder: DIOD / xMOD keep scene 0 for in-training
# visualisation (files[1:]); xMOD's 3D loader PDDataset3DOD trains on files[18:].
TRI_PD_FIRST_TRAIN_SCENE, TRI_PD_FIRST_TRAIN_SCENE_3D = 1, 18


def read_tri_pd_intrinsics(scene: Path) -> Dict[str, List[List[float]]]:
    """Camera name -> intrinsics K [3, 3] from a TRI-PD scene's DGP calibration file
    `calibration/<hash>.json` ({"names": [...], "intrinsics": [{"fx", "fy", "cx", "cy", ...}, ...]},
    as xMOD PD_dataset._depth2point reads it). {} when the scene has no calibration folder; with
    several files, xMOD's `XMOD_PD_CALIBRATION` is taken, else it is an error."""
    files = sorted((scene / "calibration").glob("*.json"))
    if not files:
        return {}
    if len(files) > 1:
        chosen = [f for f in files if f.name == XMOD_PD_CALIBRATION]
        if not chosen:
            raise ConfigError(f"{scene / 'calibration'} holds {len(files)} calibration files and none is {XMOD_PD_CALIBRATION}")
        files = chosen
    calib = json.loads(files[0].read_text())
    try:
        return {name: [[float(k["fx"]), 0.0, float(k["cx"])], [0.0, float(k["fy"]), float(k["cy"])], [0.0, 0.0, 1.0]]
                for name, k in zip(calib["names"], calib["intrinsics"])}
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{files[0]}: not a DGP calibration file with 'names' and 'intrinsics' fx/fy/cx/cy ({e!r})") from e


def tri_pd_scenes(base: Path, first: int, skip_banned: bool) -> List[Path]:
    """The sorted scene folders of a TRI-PD folder from index `first`, without the banned ones when
    `skip_banned` (training: DIOD datasetPD.py:42)."""
    scenes = sorted(p for p in base.glob("scene_*") if p.is_dir())[first:]
    if not skip_banned:
        return scenes
    kept = [p for p in scenes if p.name not in TRI_PD_BANNED_SCENES]
    logger.info("TRI-PD %s: %d scenes from #%d, %d of them banned (DIOD banned_scenes) and skipped",
                base, len(scenes), first, len(scenes) - len(kept))
    return kept


def load_tri_pd(root: Path, split: str, clip_length: int = 5, first_scene: int = TRI_PD_FIRST_TRAIN_SCENE) -> List[Dict]:
    """TRI-PD as downloaded (DOM's TRI_PD_train and test_video folders, merged with DOM's additional
    masks, as DIOD and xMOD read them). `tri_pd/train/` = TRI_PD_train: scenes sorted, from
    `first_scene` on, banned scenes skipped; `scene_*/rgb/camera_0X/*.png` with the training masks
    next to `rgb` (est_masks/, moving_masks/, ari_masks/: CAD.MOTION.SUPERVISION), and for xMOD
    `depth/camera_0X/*.npz` with the scene's `calibration/<hash>.json`. `tri_pd/test/` = test_video:
    every scene, `ari_masks/` as ground truth, cut into clips."""
    name = "tri_pd_train" if split == "train" else "tri_pd_val"
    base = require(root / "tri_pd" / ("train" if split == "train" else "test"), name, "TRI-PD")
    videos = []
    first = first_scene if split == "train" else 0
    for scene in tri_pd_scenes(base, first, split == "train"):
        intrinsics = read_tri_pd_intrinsics(scene)
        for cam_dir in sorted((scene / "rgb").glob("camera_*")):
            frames = sorted(cam_dir.glob("*.png"))
            if len(frames) < clip_length:
                continue
            per_kind = {kind: [scene / folder / cam_dir.name / f.name for f in frames]
                        for kind, folder in TRI_PD_SUPERVISION.items() if (scene / folder / cam_dir.name).is_dir()}
            depth = [scene / "depth" / cam_dir.name / f"{f.stem}.npz" for f in frames]
            calib = {"K": intrinsics[cam_dir.name]} if cam_dir.name in intrinsics else None
            videos.append(_video_dict(
                f"{scene.name}/{cam_dir.name}", frames,
                per_kind if split == "train" else None, None if split == "train" else per_kind.get("all"),
                depth=[str(p) for p in depth] if depth[0].exists() else None,
                calib=calib, crop_top=TRI_PD_CROP_TOP, clip_length=clip_length,
                gt_min_fraction=0.0 if split == "train" else TRI_PD_GT_MIN_FRACTION,
            ))
    if not videos:
        raise DatasetMissingError(
            f"dataset '{name}': no camera video of >= {clip_length} frames in {base}/scene_*/rgb/camera_0X "
            f"(scenes from #{first} of the sorted folder; DIOD's banned scenes skipped in training); see {README}, section 'TRI-PD'")
    logger.info("%s: %d camera videos under %s", name, len(videos), base)
    return videos if split == "train" else split_into_clips(videos, clip_length)


def kitti_drives(base: Path) -> List[Path]:
    """KITTI drive folders `*_sync`, sorted by name: directly under `base` (DIOD / xMOD
    KITTI_DOM_train) or one level down (the KITTI raw download, `<date>/<drive>_sync`)."""
    flat = [p for p in base.glob("*_sync") if p.is_dir()]
    return sorted(flat or [p for p in base.glob("*/*_sync") if p.is_dir()], key=lambda p: p.name)


def load_kitti(root: Path, split: str, clip_length: int = 5) -> List[Dict]:
    """KITTI. train (`kitti/raw/`): the drives of DIOD / xMOD's KITTI_DOM_train or of the KITTI raw
    download (`kitti_drives`), `image_0{2,3}/data/*.png` with DOM's RAFT motion masks in
    `image_0X/raft_seg/` (the "est" supervision), velodyne in `velodyne_points/data/*.bin` and the
    video calibration `calib_{cam_to_cam,velo_to_cam}.txt` in the drive folder (xMOD) or its date
    folder (KITTI raw); drives sorted, the first 151 kept, the first 5 of them held out (DIOD).
    val (`kitti/instance_2015/`): DIOD's KITTI_DOM_test `{rgb,instance}/*.png` (single frames,
    clip length 1) with xMOD's `pc/<id>.bin` and `calib/<id>/calib_{cam_to_cam,velo_to_cam}.txt`
    (or a KITTI object-format `calib/<id>.txt`)."""
    if split == "train":
        base = require(root / "kitti" / "raw", "kitti_train", "KITTI")
        videos = []
        for drive in kitti_drives(base)[:KITTI_MAX_DRIVES][KITTI_EVAL_DRIVES:]:
            calib = _kitti_video_calib(drive) or _kitti_video_calib(drive.parent)
            velo = sorted((drive / "velodyne_points" / "data").glob("*.bin"))
            for cam in ("image_02", "image_03"):
                frames = sorted((drive / cam / "data").glob("*.png"))
                if len(frames) < clip_length:
                    continue
                motion = {"est": [drive / cam / "raft_seg" / f.name for f in frames]}
                cam_calib = dict(calib, P_rect=calib[f"P_rect_{cam[-2:]}"]) if calib else None
                videos.append(_video_dict(
                    f"{drive.name}/{cam}", frames, motion, None, clip_length=clip_length, calib=cam_calib,
                    velodyne=[str(p) for p in velo] if len(velo) == len(frames) else None,
                ))
        if not videos:
            require(base / "<drive>_sync" / "image_02" / "data", "kitti_train", "KITTI")
        logger.info("kitti_train: %d camera videos under %s", len(videos), base)
        return videos
    base = require(root / "kitti" / "instance_2015", "kitti_val", "KITTI")
    frames = sorted(require(base / "rgb", "kitti_val", "KITTI").glob("*.png"))
    out = []
    for f in frames:
        pc = base / "pc" / f"{f.stem}.bin"
        out.append(_video_dict(f.stem, [f], None, [base / "instance" / f.name], clip_start=0, clip_length=1,
                               velodyne=[str(pc)] if pc.exists() else None, calib=_kitti_frame_calib(base / "calib", f.stem)))
    return out


def _kitti_frame_calib(folder: Path, stem: str) -> Optional[Dict]:
    """Calibration of a KITTI 2015 frame: xMOD's `calib/<id>/` video calibration files, or a KITTI
    object-format `calib/<id>.txt` (P2, R0_rect, Tr_velo_to_cam); None when neither exists."""
    if (folder / stem).is_dir():
        calib = _kitti_video_calib(folder / stem)
        return dict(calib, P_rect=calib["P_rect_02"]) if calib else None
    if not (folder / f"{stem}.txt").exists():
        return None
    c = read_kitti_calib(folder / f"{stem}.txt")
    return {"velo_to_cam": c["Tr_velo_to_cam"].reshape(3, 4), "R_rect": c["R0_rect"].reshape(3, 3), "P_rect": c["P2"].reshape(3, 4)}


def _kitti_video_calib(folder: Path) -> Optional[Dict]:
    """The KITTI raw calibration files `calib_velo_to_cam.txt` and `calib_cam_to_cam.txt` of `folder`
    (xMOD kitti_util.Calibration.read_calib_from_video), or None when they are not there."""
    v2c, c2c = folder / "calib_velo_to_cam.txt", folder / "calib_cam_to_cam.txt"
    if not (v2c.exists() and c2c.exists()):
        return None
    v, c = read_kitti_calib(v2c), read_kitti_calib(c2c)
    return {"velo_to_cam": np.c_[v["R"].reshape(3, 3), v["T"]], "R_rect": c["R_rect_00"].reshape(3, 3),
            "P_rect_02": c["P_rect_02"].reshape(3, 4), "P_rect_03": c["P_rect_03"].reshape(3, 4)}


MOTION_DATASETS = {
    **{name: ("Synthetic data", lambda root, name=name: load_synthetic_motion(name, root)) for name in MOTION_SPLITS},
    "tri_pd_train": ("TRI-PD", lambda root: load_tri_pd(root, "train")),
    "tri_pd_train_3d": ("TRI-PD", lambda root: load_tri_pd(root, "train", first_scene=TRI_PD_FIRST_TRAIN_SCENE_3D)),
    "tri_pd_val": ("TRI-PD", lambda root: load_tri_pd(root, "val")),
    "kitti_train": ("KITTI", lambda root: load_kitti(root, "train")),
    "kitti_val": ("KITTI", lambda root: load_kitti(root, "val")),
}


def register_motion_datasets(root: Path) -> None:
    """Register the motion splits (lazy: nothing is read until a split is loaded)."""
    for name, (section, loader) in MOTION_DATASETS.items():
        DatasetCatalog.register(name, lambda root=root, loader=loader: loader(root))
        MetadataCatalog.get(name).set(evaluator_type="motion", readme_section=section)


# ---------------------------------------------------------------------------------------------
# Mapper


def _read_image(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise CorruptImageError.of(path)
    return img[:, :, ::-1]


def _read_mask(path: str) -> np.ndarray:
    m = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if m is None:
        raise CorruptImageError.of(path, "mask")
    return m if m.ndim == 2 else m[:, :, 0]


def supervision_paths(d: Dict, kind: str) -> Optional[List[str]]:
    """The video's motion-mask paths of supervision `kind` (CAD.MOTION.SUPERVISION); None when it has
    no motion masks; `ConfigError` when it has others only."""
    kinds = d.get("motion_masks")
    if not kinds:
        return None
    if kind not in kinds:
        raise ConfigError(f"CAD.MOTION.SUPERVISION '{kind}': video '{d['video']}' has no such masks "
                          f"(it has {', '.join(sorted(kinds))}; TRI-PD folders: {TRI_PD_SUPERVISION})")
    return kinds[kind]


def drop_small_ids(ids: np.ndarray, min_area: int) -> np.ndarray:
    """Ids with fewer than `min_area` pixels in a frame -> 0; ids int [H, W]."""
    counts = np.bincount(ids.reshape(-1))
    small = counts < min_area
    small[0] = True
    return np.where(small[ids], 0, ids)


class MotionClipMapper:
    """Reads a clip of `CAD.MOTION.CLIP_LENGTH` frames and returns tensors at `INPUT_SIZE`:

    image uint8 [T, 3, H, W] (RGB), motion_masks int64 [T, H, W] (train), gt_masks int64
    [T, H, W] (when available), range float [T, 4, H, W] (xMOD, `with_range`), moving_ids,
    file_names (the clip's frame paths). Motion masks are those of CAD.MOTION.SUPERVISION.
    Training: random clip start, random resized crop (fixed aspect ratio) and horizontal flip shared
    by every frame, mask and range image (DIOD transforms.get_crop_transform). Colour and point
    augmentations are applied to the student's copy in the model, so the teachers see clean inputs.
    """

    def __init__(self, cfg, is_train: bool = True, with_range: bool = False):
        m = cfg.CAD.MOTION
        self.is_train = is_train
        self.with_range = with_range
        self.clip_length = m.CLIP_LENGTH
        self.size = tuple(m.INPUT_SIZE)
        self.crop_prob, self.crop_scale, self.flip_prob = m.CROP_PROB, tuple(m.CROP_SCALE), m.FLIP_PROB
        self.min_mask_area = m.MIN_MASK_AREA
        self.supervision = m.SUPERVISION
        self._gt_cache: Dict[str, List[np.ndarray]] = {}  # first GT path of a video -> `_gt_ids_kept`

    def _geometry(self, img: np.ndarray, crop_top: float, box, flip: bool, nearest: bool) -> np.ndarray:
        h = img.shape[0]
        img = img[int(round(crop_top * h)):]
        if box is not None:
            y0, x0, y1, x1 = box
            hh, ww = img.shape[:2]
            img = img[int(y0 * hh): int(np.ceil(y1 * hh)), int(x0 * ww): int(np.ceil(x1 * ww))]
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        out = cv2.resize(np.ascontiguousarray(img), self.size[::-1], interpolation=interp)
        return out[:, ::-1] if flip else out

    def _random_box(self) -> Optional[Tuple[float, float, float, float]]:
        """Relative crop box (y0, x0, y1, x1) keeping the frame's aspect ratio, or None."""
        if random.random() >= self.crop_prob:
            return None
        side = np.sqrt(random.uniform(*self.crop_scale))
        y0, x0 = random.uniform(0, 1 - side), random.uniform(0, 1 - side)
        return (y0, x0, y0 + side, x0 + side)

    def _range(self, d: Dict, t: int, raw_hw: Tuple[int, int]) -> np.ndarray:
        if d.get("depth") and d.get("calib"):
            depth = np.load(d["depth"][t])["data"].astype(np.float32)
            return range_image_from_depth(depth, np.asarray(d["calib"]["K"], np.float32))
        if d.get("velodyne") and d.get("calib"):
            pts = np.fromfile(d["velodyne"][t], np.float32).reshape(-1, 4)
            return range_image_from_points(velodyne_to_rect(pts, d["calib"]), np.asarray(d["calib"]["P_rect"]), *raw_hw)
        missing = "calibration" if d.get("depth") or d.get("velodyne") else "depth or LiDAR data"
        raise ConfigError(f"video '{d['video']}' has no {missing} for the 3D network (TRI-PD: depth/camera_0X/*.npz and "
                          "calibration/<hash>.json; KITTI: velodyne_points/ and the calib_*.txt files; datasets/README.md)")

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        """The mapped clip; in training, a clip with an unreadable frame or mask is skipped (None,
        counted, warned); in inference it raises `CorruptImageError` naming the file."""
        try:
            return self._map(dataset_dict)
        except CorruptImageError as e:
            if not self.is_train:
                raise
            skip_unreadable(e.file_name, e)
            return None

    def _gt_ids_kept(self, d: Dict, crop_top: float) -> List[np.ndarray]:
        """Per frame of the video, the ground-truth ids kept by the TRI-PD test loaders (DIOD
        datasetPDEval.py, xMOD PDDatasetEval): an id counts from the first frame in which it covers
        more than `gt_min_fraction` of the frame (500 px at 480x968) and stays counted for the rest of
        the video. Computed once per video (all its masks are read) and cached."""
        key = d["gt_masks"][0]
        if key not in self._gt_cache:
            kept, seen = [], np.zeros(0, np.int64)
            for path in d["gt_masks"]:
                ids, counts = np.unique(self._geometry(_read_mask(path), crop_top, None, False, True), return_counts=True)
                seen = np.union1d(seen, ids[(counts > d["gt_min_fraction"] * counts.sum()) & (ids > 0)])
                kept.append(seen)
            self._gt_cache[key] = kept
        return self._gt_cache[key]

    def _map(self, dataset_dict: Dict) -> Dict:
        d = dataset_dict
        n, T = len(d["frames"]), d.get("clip_length", self.clip_length)
        start = d["clip_start"] if d["clip_start"] >= 0 else random.randint(0, n - T)
        idx = range(start, start + T)
        box = self._random_box() if self.is_train else None
        flip = self.is_train and random.random() < self.flip_prob
        ct = d.get("crop_top", 0.0)
        raw = [_read_image(d["frames"][t]) for t in idx]
        out = {
            "video": d["video"], "clip_start": start, "height": self.size[0], "width": self.size[1],
            "moving_ids": list(d.get("moving_ids", [])), "file_names": [d["frames"][t] for t in idx],
            "image": torch.from_numpy(np.stack([self._geometry(f, ct, box, flip, False) for f in raw])).permute(0, 3, 1, 2).contiguous(),
        }
        for key, paths in (("motion_masks", supervision_paths(d, self.supervision)), ("gt_masks", d.get("gt_masks"))):
            if paths:
                masks = np.stack([self._geometry(_read_mask(paths[t]), ct, box, flip, True) for t in idx]).astype(np.int64)
                if key == "motion_masks":
                    masks = np.stack([drop_small_ids(m, self.min_mask_area) for m in masks])
                elif d.get("gt_min_fraction"):
                    kept = self._gt_ids_kept(d, ct)
                    masks = np.stack([np.where(np.isin(m, kept[t]), m, 0) for m, t in zip(masks, idx)])
                out[key] = torch.from_numpy(masks)
        if self.with_range:
            rngs = [self._range(d, t, raw[0].shape[:2]) for t in idx]
            rng_img = np.stack([self._geometry(r.transpose(1, 2, 0), ct, box, flip, True).transpose(2, 0, 1) for r in rngs])
            if flip:  # x channel mirrors with the image (xMOD flipped y by mistake)
                rng_img[:, 0] = np.where(rng_img[:, 0] > 0, 1 - rng_img[:, 0], 0)
            out["range"] = torch.from_numpy(np.ascontiguousarray(rng_img, dtype=np.float32))
        return out

