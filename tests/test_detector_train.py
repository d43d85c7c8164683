"""The synthetic Cascade Mask R-CNN config through tools/train_net.py: two training iterations,
--eval-only on a synthetic split, and its predictions turned into a self-training split."""
import json

from detectron2.data import DatasetCatalog

from cad.data.self_training import register_self_training_split
from cad.data.synthetic import split_paths
from conftest import REPO, TINY_OPTS, run_tool

CONFIG = REPO / "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"


def test_cascade_train_eval_and_self_training_round(tmp_path, datasets_root):
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

    evaluated = tmp_path / "eval"
    proc = run_tool("train_net.py", "--config-file", str(CONFIG), "--eval-only", "--test-dataset", "synthetic_shapes_tiny_val",
                    *TINY_OPTS, "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(evaluated), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the values of the evaluation: tests/test_learning.py::test_cascade_soft_targets_droploss_overfits_pseudo_masks

    image_dir, gt_json = split_paths("synthetic_shapes_tiny_val", datasets_root)
    proc = run_tool("self_training_ann.py", "--detectron2-out-dir", str(evaluated), "--coco-ann-path", str(gt_json),
                    "--save-path-prefix", str(tmp_path / "st"), "--threshold", "0.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = json.loads((evaluated / "inference/synthetic_shapes_tiny_val/coco_instances_results.json").read_text())
    register_self_training_split("test_detector_st_tiny", tmp_path / "st_thresh0.json", image_dir)
    dicts = DatasetCatalog.get("test_detector_st_tiny")
    anns = [a for d in dicts for a in d["annotations"]]
    assert 0 < len(anns) <= len(predictions)
    assert all(a["segmentation"]["size"] == [128, 128] and 0 <= a["score"] <= 1 for a in anns)
