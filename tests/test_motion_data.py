"""synthetic_motion generation, TRI-PD / KITTI layouts (hand-made tiny trees), clip mapper, range images."""
import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from cad.config import ConfigError, add_cad_config
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


def _tri_pd_scene(base, scene, rng, cameras=("camera_01",), folders=("est_masks",), frames=6, depth=False):
    """A tiny TRI-PD scene in the official layout (DOM's TRI_PD_train merged with its masks): frames,
    one mask folder per supervision kind (ids 4 and 7), dense depth and the DGP calibration file."""
    for cam in cameras:
        for t in range(frames):
            atomic_write_png(base / scene / "rgb" / cam / f"{t:06d}.png", rng.integers(0, 255, (76, 121, 3), dtype=np.uint8))
            for k, folder in enumerate(folders):
                mask = np.zeros((76, 121))
                mask[40:70, 10:60] = 4 + 3 * k  # est_masks 4, moving_masks 7, ari_masks 10
                _write_mask(base / scene / folder / cam / f"{t:06d}.png", mask)
            if depth:
                (base / scene / "depth" / cam).mkdir(parents=True, exist_ok=True)
                np.savez_compressed(base / scene / "depth" / cam / f"{t:06d}.npz", data=np.full((76, 121), 20.0, np.float32))
    if depth:
        calib = {"names": ["lidar", *cameras], "intrinsics": [{"fx": 0, "fy": 0, "cx": 0, "cy": 0, "skew": 0}] + [
            {"fx": 100.0, "fy": 100.0, "cx": 60.0, "cy": 38.0, "skew": 0.0, "fov": -1.0} for _ in cameras]}
        (base / scene / "calibration").mkdir(parents=True)
        (base / scene / "calibration" / "f7ac1d5879108bf162666fa9836d1f9ea712a35f.json").write_text(json.dumps(calib))


def test_tri_pd_official_layout_banned_scenes_supervision_and_calibration(tmp_path):
    with pytest.raises(DatasetMissingError, match="TRI-PD"):
        load_tri_pd(tmp_path, "train")
    rng = np.random.default_rng(0)
    train = tmp_path / "tri_pd" / "train"
    _tri_pd_scene(train, "scene_000000", rng)  # DIOD / xMOD: files[1:], the first scene only for visualisation
    _tri_pd_scene(train, "scene_000001", rng, ("camera_01", "camera_05"), ("est_masks", "moving_masks", "ari_masks"), depth=True)
    _tri_pd_scene(train, "scene_000002", rng)  # in DIOD's banned_scenes
    _tri_pd_scene(train, "scene_000003", rng, frames=4)  # shorter than a clip
    videos = load_tri_pd(tmp_path, "train")
    assert [v["video"] for v in videos] == ["scene_000001/camera_01", "scene_000001/camera_05"]
    with pytest.raises(DatasetMissingError, match=r"no camera video of >= 5 frames .* \(scenes from #2"):
        load_tri_pd(tmp_path, "train", first_scene=2)  # xMOD's 3D split starts later (files[18:])
    assert set(videos[0]["motion_masks"]) == {"est", "moving", "all"} and videos[0]["calib"]["K"][0] == [100.0, 0.0, 60.0]
    for supervision, mask_id in (("est", 4), ("moving", 7), ("all", 10)):
        cfg = _cfg((24, 48))
        cfg.CAD.MOTION.SUPERVISION = supervision
        out = MotionClipMapper(cfg, is_train=True, with_range=True)(videos[1])
        assert out["image"].shape == (5, 3, 24, 48) and out["motion_masks"].max() == mask_id
        assert out["range"].shape == (5, 4, 24, 48) and (out["range"] > 0).all()  # depth 20 m everywhere
    # z channel of the back-projected depth: (20 - 1) / (70 - 1) (xMOD normalisation)
    torch.testing.assert_close(out["range"][:, 2], torch.full((5, 24, 48), 19 / 69))
    cfg = _cfg((24, 48))
    cfg.CAD.MOTION.SUPERVISION = "moving"
    with pytest.raises(ConfigError, match="SUPERVISION 'moving': video 'scene_000000/camera_01' has no such masks"):
        MotionClipMapper(cfg, is_train=True)(load_tri_pd(tmp_path, "train", first_scene=0)[0])
    # test set (DIOD test_video): every scene, banned ones included, ari_masks as ground truth
    _tri_pd_scene(tmp_path / "tri_pd" / "test", "scene_000002", rng, folders=("ari_masks",))
    val = load_tri_pd(tmp_path, "val")
    assert len(val) == 1 and val[0]["clip_start"] == 0 and val[0]["motion_masks"] is None and val[0]["gt_masks"]


def _kitti_video_calib(folder, focal=40.0):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calib_velo_to_cam.txt").write_text("calib_time: 15-Mar-2012 11:37:16\nR: 0 -1 0 0 0 -1 1 0 0\nT: 0 0 0\n")
    p = f"{focal} 0 40 0 0 {focal} 20 0 0 0 1 0"
    (folder / "calib_cam_to_cam.txt").write_text(f"R_rect_00: 1 0 0 0 1 0 0 0 1\nP_rect_02: {p}\nP_rect_03: {p}\n")


def test_kitti_official_layouts_and_calibration(tmp_path):
    with pytest.raises(DatasetMissingError, match="KITTI"):
        load_kitti(tmp_path, "val")
    rng = np.random.default_rng(0)
    # DIOD / xMOD KITTI_DOM_train: drives directly under the folder, xMOD's calibration inside each drive
    raw = tmp_path / "kitti" / "raw"
    for d in range(7):
        drive = raw / f"2011_09_26_drive_{d:04d}_sync"
        for t in range(5):
            atomic_write_png(drive / "image_02" / "data" / f"{t:010d}.png", rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
            _write_mask(drive / "image_02" / "raft_seg" / f"{t:010d}.png", np.full((40, 80), 3))
            (drive / "velodyne_points" / "data").mkdir(parents=True, exist_ok=True)
            np.array([[10.0, 0.0, 0.0, 1.0]], np.float32).tofile(drive / "velodyne_points" / "data" / f"{t:010d}.bin")
        _kitti_video_calib(drive)
    videos = load_kitti(tmp_path, "train")
    assert [v["video"] for v in videos] == ["2011_09_26_drive_0005_sync/image_02", "2011_09_26_drive_0006_sync/image_02"]
    out = MotionClipMapper(_cfg((20, 40)), is_train=False, with_range=True)({**videos[0], "clip_start": 0})
    # velo (10, 0, 0) -> camera (0, 0, 10) -> pixel (40, 20) of 80x40 -> (10, 20) at 20x40
    assert out["motion_masks"].max() == 3 and (out["range"][0, 2] > 0).nonzero().tolist() == [[10, 20]]
    # the KITTI raw download: <date>/<drive>_sync with the calibration in the date folder
    nested = tmp_path / "nested" / "kitti" / "raw" / "2011_09_26"
    nested.parent.mkdir(parents=True)
    raw.rename(nested)
    for drive in nested.glob("*_sync"):
        for f in drive.glob("calib_*.txt"):
            f.unlink()
    _kitti_video_calib(nested, focal=20.0)
    again = load_kitti(tmp_path / "nested", "train")
    assert [v["video"] for v in again] == [v["video"] for v in videos] and again[0]["calib"]["P_rect"][0, 0] == 20.0
    # DIOD's KITTI_DOM_test (rgb/, instance/) with xMOD's pc/<id>.bin and calib/<id>/ video calibration
    base = tmp_path / "kitti" / "instance_2015"
    atomic_write_png(base / "rgb" / "000000_10.png", rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    _write_mask(base / "instance" / "000000_10.png", np.ones((40, 80)))
    _kitti_video_calib(base / "calib" / "000000_10")
    (base / "pc").mkdir()
    np.array([[10.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]], np.float32).tofile(base / "pc" / "000000_10.bin")
    # and a KITTI object-format calib/<id>.txt
    atomic_write_png(base / "rgb" / "000001_10.png", rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    _write_mask(base / "instance" / "000001_10.png", np.ones((40, 80)))
    (base / "calib" / "000001_10.txt").write_text(
        "P2: 40 0 40 0 0 40 20 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 0 -1 0 0 0 0 -1 0 1 0 0 0\n")
    np.array([[10.0, 0.0, 0.0, 1.0]], np.float32).tofile(base / "pc" / "000001_10.bin")
    val = load_kitti(tmp_path, "val")
    assert len(val) == 2 and val[0]["clip_length"] == 1
    for v in val:
        out = MotionClipMapper(_cfg((20, 40)), is_train=False, with_range=True)(v)
        assert out["range"].shape == (1, 4, 20, 40) and (out["range"][0, 2] > 0).nonzero().tolist() == [[10, 20]]  # x > 2 m only


def test_epochs_set_max_iter_from_the_training_videos():
    """CAD.MOTION.EPOCHS: the official scripts' epochs, floor(videos / batch) iterations each."""
    from cad.distillation.motion import epochs_to_iterations

    cfg = _cfg()
    cfg.DATASETS.TRAIN = ("synthetic_motion_tiny_train",)  # 3 videos
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER = 2, 7
    assert epochs_to_iterations(cfg) is cfg  # EPOCHS 0: SOLVER.MAX_ITER
    cfg.CAD.MOTION.EPOCHS = 5
    assert epochs_to_iterations(cfg).SOLVER.MAX_ITER == 5 and cfg.SOLVER.MAX_ITER == 7
    cfg.SOLVER.IMS_PER_BATCH = 4
    with pytest.raises(ConfigError, match="3 training videos make no batch of SOLVER.IMS_PER_BATCH 4"):
        epochs_to_iterations(cfg)


def test_range_without_calibration_is_one_config_error(tmp_path):
    rng = np.random.default_rng(0)
    _tri_pd_scene(tmp_path / "tri_pd" / "train", "scene_000001", rng, depth=True)
    for f in (tmp_path / "tri_pd" / "train" / "scene_000001" / "calibration").iterdir():
        f.unlink()
    video = load_tri_pd(tmp_path, "train", first_scene=0)[0]
    with pytest.raises(ConfigError, match="'scene_000001/camera_01' has no calibration for the 3D network"):
        MotionClipMapper(_cfg(), is_train=False, with_range=True)(video)


def test_tri_pd_test_ground_truth_keeps_ids_from_their_first_frame_over_500_px(tmp_path):
    """DIOD datasetPDEval / xMOD PDDatasetEval: an id is background until it has > 500 px in a 480x968
    frame (here > 10.2 px of 79x120), then stays an object for the rest of the video (also in later clips)."""
    scene = tmp_path / "tri_pd" / "test" / "scene_000007"
    rng = np.random.default_rng(0)
    for t in range(10):  # 100x120 frames: 21 rows cropped at the top, 79x120 = the input size
        atomic_write_png(scene / "rgb" / "camera_01" / f"{t:06d}.png", rng.integers(0, 255, (100, 120, 3), dtype=np.uint8))
        mask = np.zeros((100, 120))
        mask[30:34, 0:4] = 5  # 16 px in every frame
        mask[30:33, 40:43] = 7  # 9 px in every frame: never counted
        side = 4 if t == 3 else 3
        mask[60:60 + side, 60:60 + side] = 9  # 16 px in frame 3 only
        _write_mask(scene / "ari_masks" / "camera_01" / f"{t:06d}.png", mask)
    clips = load_tri_pd(tmp_path, "val")
    mapper = MotionClipMapper(_cfg((79, 120)), is_train=False)
    present = [[sorted(set(np.unique(m)) - {0}) for m in mapper(c)["gt_masks"].numpy()] for c in clips]
    assert present == [[[5], [5], [5], [5, 9], [5, 9]], [[5, 9]] * 5]
