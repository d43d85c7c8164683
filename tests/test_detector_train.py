"""Two training iterations of the synthetic Cascade Mask R-CNN config through tools/train_net.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"


def test_cascade_pseudo_label_training_two_iterations(tmp_path):
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "ds"), "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(CONFIG),
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1", "OUTPUT_DIR", str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    last = metrics[-1]
    for stage in range(3):
        for key in ("loss_cls", "loss_box_reg"):
            assert f"{key}_stage{stage}" in last
        assert 0.0 < last[f"stage{stage}/fast_rcnn/droploss_kept"] <= 1.0
    assert last["loss_mask"] > 0
    assert (out / "model_final.pth").exists()
