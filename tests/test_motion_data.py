"""synthetic_motion generation, TRI-PD / KITTI layouts (hand-made tiny trees), clip mapper, range images."""
import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from cad.config import add_cad_config
from cad.data.motion import (
    MotionClipMapper,
    drop_small_ids,
    load_kitti,
    load_synthetic_motion,
    load_tri_pd,
    normalise_points,
    range_image_from_depth,
    range_image_from_points,
)
from cad.data.mapper import CadDatasetMapper, CorruptImageError
from cad.data.paths import DatasetMissingError
from cad.data.synthetic_motion import (
    GENERATOR_VERSION, MIN_CONTRAST, MIN_EXTENT, MOTION_SPLITS, _object_texture, _shape, generate_motion, render_video,
)
from cad.utils.io import atomic_write_png


def _cfg(size=(32, 64)):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.CAD.MOTION.INPUT_SIZE = size
    cfg.CAD.MOTION.MIN_MASK_AREA = 5
    return cfg


def test_render_video_deterministic_moving_and_static():
    split = MOTION_SPLITS["synthetic_motion_tiny_train"]
    a, ids, depth, moving = render_video(split, 1)
    b, ids2, _, moving2 = render_video(split, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and moving == moving2
    assert len(moving) >= 1 and ids[0].max() > len(moving)  # static objects too
    assert (depth[0][: int(0.2 * split.height)] == 0).all() and (depth[0][-1] > 0).all()  # sky invalid


def test_objects_are_not_slivers_and_stand_out():
    split = MOTION_SPLITS["synthetic_motion_train"]
    rng = np.random.default_rng(0)
    shapes = [_shape(rng, split) for _ in range(200)]
    assert min(min(s.shape) for s in shapes) >= MIN_EXTENT * split.height
    background = np.array([100.0, 120.0, 140.0])
    means = [_object_texture(rng, 12, 12, background).reshape(-1, 3).mean(0) for _ in range(50)]
    assert min(np.linalg.norm(m - background) for m in means) >= MIN_CONTRAST


def _camera_speed(ids: list, static_ids: range) -> float:
    """Mean |x shift| per frame of the static shapes while fully visible and unoccluded (= camera pan)."""
    shifts = []
    for t in range(len(ids) - 1):
        for i in static_ids:
            a, b = ids[t] == i, ids[t + 1] == i
            if a.sum() and a.sum() == b.sum():
                shifts.append(abs(np.nonzero(b)[1].mean() - np.nonzero(a)[1].mean()))
    return float(np.mean(shifts))


@pytest.mark.parametrize("name, pan", [("synthetic_motion_crowded_val", (0.3, 1.0)), ("synthetic_motion_fastcam_val", (1.5, 3.0))])
def test_crowded_splits_counts_and_camera(name, pan):
    split = MOTION_SPLITS[name]
    for v in range(4):
        _, ids, _, moving = render_video(split, v)
        num_static = min(moving) - 1  # static shapes get the first ids
        assert 2 <= num_static <= 4 and 1 <= len(moving) <= 2
        assert pan[0] - 0.5 <= _camera_speed(ids, range(1, num_static + 1)) <= pan[1] + 0.5


def test_stale_synthetic_motion_is_regenerated(tmp_path):
    index = generate_motion("synthetic_motion_tiny_val", tmp_path)
    data = json.loads(index.read_text())
    assert data["generator"]["version"] == GENERATOR_VERSION and data["generator"]["num_videos"] == 2
    for stale in ({"version": GENERATOR_VERSION - 1}, {"num_videos": 3}):
        index.write_text(json.dumps({**data, "generator": {**data["generator"], **stale}}))
        assert json.loads(generate_motion("synthetic_motion_tiny_val", tmp_path).read_text()) == data


def test_synthetic_loader_and_mapper(tmp_path):
    train = load_synthetic_motion("synthetic_motion_tiny_train", tmp_path, clip_length=5)
    val = load_synthetic_motion("synthetic_motion_tiny_val", tmp_path, clip_length=5)
    assert len(train) == 3 and len(val) == 2 and val[0]["clip_start"] == 0
    out = MotionClipMapper(_cfg(), is_train=True, with_range=True)(train[0])
    assert out["image"].shape == (5, 3, 32, 64) and out["image"].dtype == torch.uint8
    assert out["motion_masks"].shape == (5, 32, 64) and out["range"].shape == (5, 4, 32, 64)
    assert set(torch.unique(out["motion_masks"]).tolist()) <= {0, *train[0]["moving_ids"]}
    ev = MotionClipMapper(_cfg(), is_train=False)(val[0])
    assert ev["gt_masks"].shape == (5, 32, 64) and "range" not in ev


def test_corrupt_frame_skipped_in_training_error_in_inference(tmp_path):
    clip = load_synthetic_motion("synthetic_motion_tiny_val", tmp_path, clip_length=5)[0]
    clip["frames"][2] = str(tmp_path / "broken.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    before = CadDatasetMapper.num_skipped
    assert MotionClipMapper(_cfg(), is_train=True)(dict(clip)) is None
    assert CadDatasetMapper.num_skipped == before + 1
    with pytest.raises(CorruptImageError, match="broken.png"):
        MotionClipMapper(_cfg(), is_train=False)(dict(clip))


def test_drop_small_ids():
    ids = np.array([[0, 1, 1, 2], [3, 3, 3, 2]])
    assert drop_small_ids(ids, 3).tolist() == [[0, 0, 0, 0], [3, 3, 3, 0]]


def test_range_image_from_depth_and_points():
    K = np.array([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]])
    depth = np.zeros((4, 4), np.float32)
    depth[2, 3] = 10.0  # x = (3-2)*10/10 = 1, y = 0, z = 10
    depth[0, 0] = 80.0  # beyond 70 m: invalid
    img = range_image_from_depth(depth, K)
    np.testing.assert_allclose(img[:, 2, 3], normalise_points(np.array([1.0, 0.0, 10.0])), rtol=1e-6)
    assert (img[:, 0, 0] == 0).all() and (img > 0).sum() == 4
    # two points on the same pixel: the nearer one wins (z-buffer)
    P = np.c_[K, np.zeros(3)]
    pts = np.array([[1.0, 0.0, 10.0], [2.0, 0.0, 20.0]], np.float32)
    img = range_image_from_points(pts, P, 4, 4)
    np.testing.assert_allclose(img[:, 2, 3], normalise_points(pts[0]), rtol=1e-6)


def _write_mask(path, array):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array.astype(np.uint8))


def test_tri_pd_and_kitti_layouts(tmp_path):
    with pytest.raises(DatasetMissingError, match="TRI-PD"):
        load_tri_pd(tmp_path, "train")
    with pytest.raises(DatasetMissingError, match="KITTI"):
        load_kitti(tmp_path, "val")
    rng = np.random.default_rng(0)
    for scene in ("scene_000001", "scene_000002"):
        for t in range(6):
            base = tmp_path / "tri_pd" / "train" / scene
            atomic_write_png(base / "rgb" / "camera_01" / f"{t:03d}.png", rng.integers(0, 255, (76, 121, 3), dtype=np.uint8))
            mask = np.zeros((76, 121))
            mask[40:70, 10:60] = 4
            _write_mask(base / "est_masks" / "camera_01" / f"{t:03d}.png", mask)
    videos = load_tri_pd(tmp_path, "train")
    assert len(videos) == 2 and videos[0]["video"] == "scene_000001/camera_01"
    out = MotionClipMapper(_cfg((24, 48)), is_train=True)(videos[0])
    assert out["image"].shape == (5, 3, 24, 48) and out["motion_masks"].max() == 4
    # KITTI 2015 instance set with LiDAR + object calibration
    base = tmp_path / "kitti" / "instance_2015"
    atomic_write_png(base / "rgb" / "000000_10.png", rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    _write_mask(base / "instance" / "000000_10.png", np.ones((40, 80)))
    (base / "calib").mkdir(parents=True)
    eye = "1 0 0 0 0 1 0 0 0 0 1 0"
    (base / "calib" / "000000_10.txt").write_text(
        f"P2: 40 0 40 0 0 40 20 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: {eye}\n")
    (base / "pc").mkdir()
    np.array([[5.0, 0.0, 10.0, 1.0], [1.0, 0.0, 10.0, 1.0]], np.float32).tofile(base / "pc" / "000000_10.bin")
    val = load_kitti(tmp_path, "val")
    assert len(val) == 1 and val[0]["clip_length"] == 1
    out = MotionClipMapper(_cfg((20, 40)), is_train=False, with_range=True)(val[0])
    assert out["range"].shape == (1, 4, 20, 40) and (out["range"][0, 0] > 0).sum() == 1  # one point has x > 2
