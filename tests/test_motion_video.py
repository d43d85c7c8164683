"""Captioned comparison videos of motion models (DIOD create_mp4.py's panels and captions, written
with OpenCV's mp4v encoder): composed on generated clips, encoded, decoded back and compared."""
import cv2
import numpy as np
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from cad.config import add_cad_config
from cad.data.motion import MotionClipMapper
from cad.utils.visualize_motion import CAPTION_HEIGHT, comparison_frames, write_videos


def decode(path) -> list:
    """All frames of a video file as RGB uint8 arrays."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1])
    cap.release()
    return frames


def test_comparison_video_of_generated_clips_decodes_to_the_composed_frames(tmp_path):
    """The two 3-frame clips of a generated 6-frame video, with a "prediction" equal to the GT ids:
    one MP4 of 6 frames Input | Ground truth | DIOD slots."""
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.CAD.MOTION.INPUT_SIZE, cfg.CAD.MOTION.NUM_SLOTS = (32, 64), 8
    video = DatasetCatalog.get("synthetic_motion_tiny_train")[0]  # 6 frames
    mapper = MotionClipMapper(cfg, is_train=False)
    results = []
    for start in (3, 0):  # out of order: the writer sorts a video's clips by start
        inp = mapper({**video, "clip_start": start, "clip_length": 3})
        masks = F.one_hot(inp["gt_masks"].clamp(max=6), 8).permute(0, 3, 1, 2).float()  # [T, K, H, W]
        results.append({"input": inp, "output": {"masks": masks}})
    expected = comparison_frames(sorted(results, key=lambda r: r["input"]["clip_start"]), "DIOD")
    (path,) = write_videos(results, tmp_path / "vis", "DIOD", fps=5)
    assert path.name == "tiny_train_scene_000000.mp4" and not list(path.parent.glob(".*"))  # no temporary left
    frames = decode(path)
    # 2 clips x 3 frames; 64-px panels enlarged x5 to 320, 3 panels + 2 margins, caption band
    assert len(frames) == 6 and frames[0].shape == expected[0].shape == (CAPTION_HEIGHT + 160, 3 * 320 + 20, 3)
    err = [np.abs(f.astype(float) - e.astype(float)).mean() for f, e in zip(frames, expected)]
    assert max(err) < 6, err  # lossy mp4v, but the decoded frames are the composed ones
    for i, f in enumerate(frames):  # in order: each decoded frame is nearest to its own composed frame
        assert int(np.argmin([np.abs(f.astype(float) - e.astype(float)).mean() for e in expected])) == i
    caption = frames[0][:CAPTION_HEIGHT]
    assert (caption.min(-1) < 100).sum() > 50 and caption[:, 320:330].min() > 200  # text drawn; white margin
    assert not np.array_equal(expected[0], expected[3])  # the clips' frames differ (moving shapes)
    # the slots panel blends each slot's colour (the GT ids' colours here) over the input panel
    inp, gt_panel, pred = (expected[3][CAPTION_HEIGHT:, x:x + 320].astype(float) for x in (0, 330, 660))
    fg = gt_panel.max(-1) > 0
    assert fg.sum() > 500 and np.abs((pred - 0.45 * inp)[fg] / 0.55 - gt_panel[fg]).max() < 3
