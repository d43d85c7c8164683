"""Two training iterations of the synthetic Cascade Mask R-CNN config through tools/train_net.py."""
import json

from conftest import REPO, TINY_OPTS, run_tool

CONFIG = REPO / "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"


def test_cascade_pseudo_label_training_two_iterations(tmp_path):
    """Soft targets + DropLoss + copy-paste (CopyPasteTrainer) on the tiny pseudo-label split."""
    out = tmp_path / "out"
    opts = TINY_OPTS + ["DATASETS.TRAIN", "('synthetic_shapes_tiny_train_pseudo',)", "DATASETS.TEST", "()",
                        "OUTPUT_DIR", str(out)]
    proc = run_tool("train_net.py", "--config-file", str(CONFIG), *opts, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    last = metrics[-1]
    for stage in range(3):
        for key in ("loss_cls", "loss_box_reg"):
            assert f"{key}_stage{stage}" in last
        assert 0.0 < last[f"stage{stage}/fast_rcnn/droploss_kept"] <= 1.0
    assert last["loss_mask"] > 0
    assert (out / "model_final.pth").exists()
