"""Two iterations of tools/train_net.py for the DIOD and xMOD synthetic configs (subprocess),
with self-distillation starting at iteration 1, evaluation, and --resume restoring teacher+student."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
    "CAD.MOTION.TEACHER_START_ITER", "1", "CAD.MOTION.INPUT_SIZE", "(32,64)", "CAD.MOTION.ENCODER_WIDTH", "4",
    "CAD.MOTION.SLOT_DIM", "8", "CAD.MOTION.MLP_HIDDEN", "8", "CAD.MOTION.DECODER_DIM", "4",
    "CAD.MOTION.NUM_SLOTS", "4", "CAD.NUM_THREADS", "1", "DATALOADER.NUM_WORKERS", "0",
]


def _run(args, env):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train_net.py")] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("config", ["configs/DIOD/diod_synthetic.yaml", "configs/xMOD/xmod_synthetic.yaml"])
def test_train_net_two_iterations(config, tmp_path, motion_datasets_root):
    env = dict(os.environ, DETECTRON2_DATASETS=str(motion_datasets_root), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    proc = _run(["--config-file", config, "OUTPUT_DIR", str(out)] + TINY, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["synthetic_motion_val"]["motion"]
    assert 0 <= metrics["f1_50"] <= 100 and metrics["num_frames"] > 0
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert bool(state["distilling"]) and any(k.startswith("teachers.2d.") for k in state)
    assert not torch.equal(state["teachers.2d.pos.weight"], state["students.2d.pos.weight"])  # EMA teacher
    # --resume restores iteration, students and teachers: one more iteration from 2
    proc = _run(["--config-file", config, "--resume", "OUTPUT_DIR", str(out)] + TINY[:2] + ["SOLVER.MAX_ITER", "3"] + TINY[4:], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting training from iteration 2" in proc.stderr + proc.stdout
