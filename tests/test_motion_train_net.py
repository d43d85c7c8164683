"""Two iterations of tools/train_net.py for the DIOD and xMOD synthetic configs (subprocess),
with self-distillation starting at iteration 1, evaluation, and --resume restoring teacher+student;
xMOD's three steps chained through tools/train_net.py's entry point (in-process, one iteration each)."""
import json
import re

import numpy as np
import pytest
import torch
from conftest import run_tool
from test_motion_video import decode

from cad.engine.cli import run

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


def _train_net(config: str, out, *opts: str, flags=()) -> dict:
    """`tools/train_net.py --config-file config *flags OUTPUT_DIR out *TINY *opts` in this process (the
    same `cad.engine.cli.run`, without the interpreter start); returns the motion metrics it wrote."""
    assert run(["--config-file", config, *flags, "OUTPUT_DIR", str(out), *TINY, *opts]) == 0
    return json.loads((out / "eval_results.json").read_text())["motion"]


def test_xmod_three_steps_3d_only_evaluation_and_saved_predictions(tmp_path):
    """xMOD's README: (1) 3D burn-in, (2) 3D teacher-student from (1), (3) 2D+3D cross-modal
    distillation from a DIOD checkpoint (MODEL.WEIGHTS) and step 2's (CAD.MOTION.WEIGHTS_3D), all cad
    files; then step 2 evaluated alone (xMOD --evaluation_mode 3d, no 2D checkpoint) with its
    predictions saved, and the same network inside XMOD (eval output 3d) scores the same."""
    one = ("SOLVER.MAX_ITER", "1")
    _train_net("configs/DIOD/diod_synthetic.yaml", tmp_path / "diod", *one)
    _train_net("configs/xMOD/xmod_synthetic_3d.yaml", tmp_path / "step1", *one, "CAD.MOTION.TEACHER_START_ITER", "-1")
    step1 = torch.load(tmp_path / "step1" / "model_final.pth", weights_only=False)["model"]
    assert {k.split(".")[1] for k in step1 if k.startswith("students.")} == {"3d"} and not bool(step1["distilling"])
    _train_net("configs/xMOD/xmod_synthetic_3d.yaml", tmp_path / "step2", *one, "CAD.MOTION.TEACHER_START_ITER", "0",
               "MODEL.WEIGHTS", str(tmp_path / "step1" / "model_final.pth"))
    step2 = torch.load(tmp_path / "step2" / "model_final.pth", weights_only=False)["model"]
    assert bool(step2["distilling"]) and not torch.equal(step2["teachers.3d.pos.weight"], step2["students.3d.pos.weight"])
    both = ("MODEL.WEIGHTS", str(tmp_path / "diod" / "model_final.pth"), "CAD.MOTION.WEIGHTS_3D", str(tmp_path / "step2" / "model_final.pth"))
    _train_net("configs/xMOD/xmod_synthetic.yaml", tmp_path / "step3", *one, "CAD.MOTION.TEACHER_START_ITER", "0", *both)
    step3 = torch.load(tmp_path / "step3" / "model_final.pth", weights_only=False)["model"]
    assert bool(step3["distilling"]) and any(k.startswith("students.3d.") for k in step3) and any(k.startswith("students.2d.") for k in step3)
    # 3d-only evaluation of step 2 (DIOD3D, no RGB network), predictions saved per frame
    m3 = _train_net("configs/xMOD/xmod_synthetic_3d.yaml", tmp_path / "eval3d", "CAD.MOTION.SAVE_PREDICTIONS", "True",
                    "MODEL.WEIGHTS", str(tmp_path / "step2" / "model_final.pth"), flags=["--eval-only"])
    saved = sorted((tmp_path / "eval3d" / "inference" / "synthetic_motion_tiny_val" / "predictions").rglob("*.npz"))
    assert len(saved) == m3["num_frames"] == 10 and saved[0].relative_to(saved[0].parents[2]).as_posix() == "tiny_val/scene_000000/000000.npz"
    assert np.load(saved[0])["data"].shape == (4, 8, 16)  # [K, h, w] slot masks of that frame
    # XMOD from the DIOD file + step 2's file, its 3D output: the same network, the same scores
    mx = _train_net("configs/xMOD/xmod_synthetic.yaml", tmp_path / "eval_xmod", "CAD.MOTION.XMOD_EVAL_OUTPUT", "3d", *both,
                    flags=["--eval-only"])
    assert mx["f1_50"] == m3["f1_50"] and mx["all_ari"] == m3["all_ari"]
