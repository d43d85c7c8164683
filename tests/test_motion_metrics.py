"""ARI / F1@50 of the motion evaluator on hand-made label maps."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from cad.evaluation.motion import (
    MISS_CAUSES,
    FramePredictions,
    MotionEvaluator,
    adjusted_rand_index,
    clip_ari,
    contingency_table,
    frame_predictions,
    miss_cause,
    voc_f1,
)

torch.set_num_threads(1)


def test_contingency_table_counts_pairs():
    t = torch.tensor([0, 0, 1, 1, 1, 5])
    p = torch.tensor([2, 2, 2, 3, 3, 3])
    assert contingency_table(t, p).tolist() == [[2, 0], [1, 2], [0, 1]]


@pytest.mark.parametrize("seed", range(6))
def test_ari_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    t = rng.integers(0, int(rng.integers(1, 6)), size=n)
    p = rng.integers(0, int(rng.integers(1, 8)), size=n)
    if seed % 2:  # correlated labelings
        p = np.where(rng.random(n) < 0.7, t, p)
    assert math.isclose(adjusted_rand_index(torch.tensor(t), torch.tensor(p)), adjusted_rand_score(t, p), abs_tol=1e-12)


def test_ari_hand_values():
    a = torch.tensor([0, 0, 1, 1])
    assert adjusted_rand_index(a, torch.tensor([5, 5, 7, 7])) == 1.0  # label names do not matter
    assert adjusted_rand_index(a, torch.tensor([0, 0, 0, 0])) == 0.0
    # sklearn docstring example: [0,0,1,2] vs [0,0,1,1] -> 0.5714...
    assert math.isclose(adjusted_rand_index(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, 1])), 4 / 7)
    # large map: no integer overflow (n^2 products exceed int64)
    big_t = torch.arange(600_000) % 3
    assert math.isclose(adjusted_rand_index(big_t, big_t.flip(0)), adjusted_rand_score(big_t.numpy(), big_t.flip(0).numpy()))


def test_fg_ari_ignores_background_pixels():
    gt = torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 2]]])
    # background pixels are split arbitrarily; the two objects are exact -> fg-ARI 1, all-ARI < 1
    pred = torch.tensor([[[3, 4, 1, 1], [4, 3, 2, 2]]])
    res = clip_ari(pred, gt)
    assert res["fg_ari"] == 1.0
    assert math.isclose(res["all_ari"], adjusted_rand_score(gt.flatten().numpy(), pred.flatten().numpy()))
    assert res["all_ari"] < 1.0


def _one_hot_masks(labels: torch.Tensor, k: int, conf: float = 0.8) -> torch.Tensor:
    """Soft masks [K, h, w] whose argmax is `labels` with probability `conf` there."""
    m = torch.full((k,) + labels.shape, (1 - conf) / (k - 1))
    m.scatter_(0, labels[None], conf)
    return m


def test_frame_predictions_iou_and_scores():
    gt = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 2]])
    labels = torch.tensor([[0, 0, 3, 3], [0, 1, 3, 3]])  # slot 3 = background (K=4)
    fr = frame_predictions(_one_hot_masks(labels, 4), gt, bg_slot=3, moving_ids=[2])
    # slots 0 and 1 are predictions (slot 2 wins no pixel, slot 3 is bg)
    np.testing.assert_allclose(fr.ious, [[3 / 4, 0.0], [1 / 4, 0.0]])
    np.testing.assert_allclose(fr.scores, [0.8, 0.8])
    assert fr.gt_moving.tolist() == [False, True]
    # GT 1: slot 0 wins 3 of its 4 pixels, all on GT 1 -> "other" (split); GT 2: in the bg slot
    assert [MISS_CAUSES[c] for c in fr.gt_cause] == ["other", "in_background"]


def test_miss_cause_hand_counts():
    # inter[k, g] = pixels of GT object g won by slot k; 3 slots, slot 2 = background.
    inter = torch.tensor([[4, 3, 0], [1, 0, 0], [0, 1, 5]])
    # GT 0 and GT 1 are both mostly in slot 0 (7 px): 3 (resp. 4) of its pixels lie on the other
    # object, > 0.2 * 7 -> merged. GT 2 is mostly in the background slot.
    assert miss_cause(inter, torch.tensor([7, 1, 20]), bg_slot=2).tolist() == [1, 1, 0]
    # GT 0 is mostly in slot 0, which also has 2 px of GT 1: merged only if 2 > 0.2 * slot area.
    inter = torch.tensor([[8, 2], [0, 3], [0, 0]])
    assert miss_cause(inter, torch.tensor([12, 5, 3]), bg_slot=2).tolist() == [2, 2]  # 2 < 2.4: other
    assert miss_cause(inter, torch.tensor([9, 5, 3]), bg_slot=2).tolist() == [1, 2]  # 2 > 1.8: merged


def test_voc_f1_greedy_matching_and_threshold():
    # frame 0: two predictions on the same GT; the higher score takes it, the other is an FP.
    f0 = FramePredictions(np.array([[0.9, 0.0], [0.6, 0.0]]), np.array([0.5, 0.9]), np.array([True, False]), np.array([2, 1]))
    # frame 1: IoU exactly 0.5 -> FP with DIOD's strict ">", TP with xMOD's ">="
    f1 = FramePredictions(np.array([[0.5]]), np.array([0.7]), np.array([False]), np.array([0]))
    res = voc_f1([f0, f1], 0.5, strict=True)
    # sorted: (0.9, f0 p1 -> GT0 iou .6 TP), (0.7, f1 -> .5 not > .5 FP), (0.5, f0 p0 -> GT0 taken FP)
    assert res["precision"] == pytest.approx(1 / 3)
    assert res["recall"] == pytest.approx(1 / 3)
    assert res["f1"] == pytest.approx(1 / 3)
    assert res["recall_moving"] == 1.0 and res["recall_static"] == 0.0
    # both static GTs are missed: one merged (f0), one in the background slot (f1); moving: none
    assert res["missed_static_merged"] == 0.5 and res["missed_static_in_background"] == 0.5
    assert res["missed_static_other"] == 0.0 and res["missed_moving_other"] == 0.0
    res = voc_f1([f0, f1], 0.5, strict=False)
    assert res["recall"] == pytest.approx(2 / 3) and res["precision"] == pytest.approx(2 / 3)


def test_evaluator_perfect_and_trivial():
    gt = torch.zeros(2, 8, 8, dtype=torch.long)
    gt[:, :4, :4] = 1
    gt[:, 5:, 5:] = 2
    k = 5
    perfect = torch.full((2, 8, 8), k - 1)
    perfect[gt == 1] = 0
    perfect[gt == 2] = 2
    ev = MotionEvaluator("x")
    ev.process([{"gt_masks": gt, "moving_ids": [1]}], [{"masks": torch.stack([_one_hot_masks(p, k) for p in perfect])}])
    res = ev.evaluate()["motion"]
    assert res["fg_ari"] == 100 and res["all_ari"] == 100 and res["f1_50"] == 100
    ev.reset()
    all_bg = torch.full((2, 8, 8), k - 1)
    ev.process([{"gt_masks": gt}], [{"masks": torch.stack([_one_hot_masks(p, k) for p in all_bg])}])
    res = ev.evaluate()["motion"]
    assert res["fg_ari"] == 0 and res["all_ari"] == 0 and res["f1_50"] == 0
