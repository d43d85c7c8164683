"""tools/benchmarks/gpu_check.py: its comparisons fail on outputs that differ, and the whole check
runs on CPU at tiny sizes (every training family and discovery method), so it cannot rot before
it is run on a GPU."""
import importlib.util
import json
import sys

import pytest
import torch
from detectron2.structures import Boxes, Instances

from conftest import REPO

sys.path.insert(0, str(REPO / "tools" / "benchmarks"))
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _detections(boxes, scores, masks=None):
    inst = Instances((20, 20))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.tensor(scores)
    if masks is not None:
        inst.pred_masks = masks
    return inst


def test_detection_agreement_counts_matched_boxes_scores_and_masks():
    ref = _detections([[0, 0, 10, 10], [5, 5, 15, 15]], [0.9, 0.8])
    assert gpu_check.detection_agreement(ref, _detections([[5, 5, 15, 15], [0, 0, 10, 10]], [0.805, 0.9])) == 1.0
    assert gpu_check.detection_agreement(ref, _detections([[0, 0, 10, 10], [5, 5, 15, 15]], [0.9, 0.7])) == 0.5  # score
    assert gpu_check.detection_agreement(ref, _detections([[0, 0, 10, 10], [5, 5, 15, 19]], [0.9, 0.8])) == 0.5  # IoU 0.71
    assert gpu_check.detection_agreement(ref, _detections([], [])) == 0.0
    assert gpu_check.detection_agreement(_detections([], []), _detections([], [])) == 1.0
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, :10, :10] = masks[1, 5:15, 5:15] = True
    other = masks.clone()
    other[1, 5:15, 5:10] = False  # mask IoU 0.5
    assert gpu_check.detection_agreement(_detections([[0, 0, 10, 10], [5, 5, 15, 15]], [0.9, 0.8], masks),
                                         _detections([[0, 0, 10, 10], [5, 5, 15, 15]], [0.9, 0.8], other)) == 0.5


def test_probability_and_object_comparisons_fail_on_differences():
    logits, masks = torch.randn(1, 5, 3), torch.randn(1, 5, 8, 8)
    same = gpu_check.compare_outputs("mask2former", {"pred_logits": logits, "pred_masks": masks},
                                     {"pred_logits": logits + 1e-6, "pred_masks": masks})
    assert same[1] and same[0] < 1e-5
    shifted = masks.clone()
    shifted[0, 0, 0, 0] += 1.0
    assert not gpu_check.compare_outputs("mask2former", {"pred_logits": logits, "pred_masks": masks},
                                         {"pred_logits": logits, "pred_masks": shifted})[1]
    probs = torch.rand(5, 4, 6, 6)
    assert not gpu_check.compare_outputs("motion", [{"masks": probs}], [{"masks": probs + 0.01}])[1]
    box = {"bbox": [0, 0, 10, 10]}
    assert gpu_check.object_agreement([box], [{"bbox": [0, 0, 10, 10]}], 20, 20) == 1.0
    assert gpu_check.object_agreement([box], [{"bbox": [0, 0, 10, 5]}], 20, 20) == 0.0


def test_step_summary_uses_iterations_after_warmup():
    r = gpu_check.step_summary({"2": 0.5, "3": 0.3, "4": 0.4}, {"0": 9.0, "2": 0.1, "3": 0.1, "4": 0.1}, 4, warmup=3)
    assert r["s_per_iter"] == pytest.approx(0.35) and r["images_per_s"] == pytest.approx(4 / 0.35)
    assert r["data_wait"] == pytest.approx(0.2 / 0.7)
    with pytest.raises(ValueError, match="raise --steps"):
        gpu_check.step_summary({"1": 0.5}, {}, 4, warmup=3)


def test_gpu_check_runs_every_family_and_method_on_cpu(capsys):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--images", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["name"] for r in report["training"]] == list(gpu_check.TRAINING)
    assert [r["name"] for r in report["methods"]] == list(gpu_check.METHODS)
    for r in report["training"]:
        assert r["s_per_iter"] > 0 and 0 <= r["data_wait"] < 1 and r["agrees"] and r["world_size"] == 1
    for r in report["methods"]:
        assert r["stage1_s_per_image"] > 0 and r["agrees"]


def test_cuda_request_without_cuda_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
