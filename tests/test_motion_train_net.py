"""Two iterations of tools/train_net.py for the DIOD and xMOD synthetic configs (subprocess),
with self-distillation starting at iteration 1, evaluation, and --resume restoring teacher+student."""
import json
import re

import numpy as np
import pytest
import torch
from conftest import run_tool
from test_motion_video import decode

TINY = [
    "DATASETS.TRAIN", "('synthetic_motion_tiny_train',)", "DATASETS.TEST", "('synthetic_motion_tiny_val',)",
    "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
    "CAD.MOTION.TEACHER_START_ITER", "1", "CAD.MOTION.INPUT_SIZE", "(32,64)", "CAD.MOTION.ENCODER_WIDTH", "4",
    "CAD.MOTION.SLOT_DIM", "8", "CAD.MOTION.MLP_HIDDEN", "8", "CAD.MOTION.DECODER_DIM", "4",
    "CAD.MOTION.NUM_SLOTS", "4", "CAD.NUM_THREADS", "1", "DATALOADER.NUM_WORKERS", "0",
]


@pytest.mark.parametrize("config", ["configs/DIOD/diod_synthetic.yaml", "configs/xMOD/xmod_synthetic.yaml"])
def test_train_net_two_iterations(config, tmp_path):
    out = tmp_path / "out"
    proc = run_tool("train_net.py", "--config-file", config, "OUTPUT_DIR", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "eval_results.json").read_text())["motion"]
    # synthetic_motion_tiny_val: 2 videos of 5 frames, one 5-frame clip each (values: tests/test_learning.py)
    assert metrics["num_frames"] == 10 and metrics["num_clips_ari"] <= 2
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert bool(state["distilling"]) and any(k.startswith("teachers.2d.") for k in state)
    assert not torch.equal(state["teachers.2d.pos.weight"], state["students.2d.pos.weight"])  # EMA teacher
    if "xMOD" in config:
        return  # --resume is the same code path for both meta-architectures
    # --resume restores iteration, students and teachers: one more iteration from 2
    proc = run_tool("train_net.py", "--config-file", config, "--resume", "OUTPUT_DIR", str(out), *TINY, "SOLVER.MAX_ITER", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting training from iteration 2" in proc.stderr + proc.stdout


def test_visualize_motion_strips_baselines_and_missing_weights(tmp_path):
    config = "configs/DIOD/diod_synthetic.yaml"
    out = tmp_path / "out"
    assert run_tool("train_net.py", "--config-file", config, "OUTPUT_DIR", str(out), *TINY).returncode == 0
    vis = run_tool("visualize_motion.py", "--config-file", config, "--weights", str(out / "model_final.pth"),
                   "--num-clips", "2", "--video", "--out", str(tmp_path / "vis"), *TINY)
    assert vis.returncode == 0, vis.stderr[-3000:]
    assert len(list((tmp_path / "vis").glob("*.png"))) == 2
    # --video: also one captioned MP4 per video of synthetic_motion_tiny_val (2 videos of one 5-frame clip)
    videos = sorted((tmp_path / "vis").glob("*.mp4"))
    assert [p.name for p in videos] == ["tiny_val_scene_000000.mp4", "tiny_val_scene_000001.mp4"]
    for path in videos:
        frames = decode(path)  # Input | Ground truth | DIOD slots, 32x64 panels enlarged x5, captions
        assert len(frames) == 5 and frames[0].shape == (30 + 160, 3 * 320 + 20, 3)
        assert frames[0][40:, :320].std() > 5 and not np.array_equal(frames[0][40:, 330:650], frames[4][40:, 330:650])
    base = run_tool("visualize_motion.py", "--config-file", config, "--baselines", *TINY)
    assert base.returncode == 0, base.stderr[-3000:]
    assert json.loads(base.stdout)["all_background"]["f1_50"] == 0.0
    for weights in ((), ("--weights", str(tmp_path / "nope.pth"))):
        proc = run_tool("visualize_motion.py", "--config-file", config, *weights, "--out", str(tmp_path / "none"), *TINY)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert re.search("no weights given" if not weights else "nope.pth' not found", errors[0])
        assert not (tmp_path / "none").exists()
