"""Cascade stage matching carries each proposal's matched pseudo-object score (and DropLoss boxes)."""
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from cad.config import add_cad_config
from conftest import REPO


def _heads():
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg).roi_heads


def _targets(boxes, scores):
    t = Instances((100, 100))
    t.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    t.gt_classes = torch.zeros(len(scores), dtype=torch.int64)
    t.gt_scores = torch.tensor(scores, dtype=torch.float32)
    return t


def test_later_stages_take_the_score_of_the_gt_they_match():
    heads = _heads()
    targets = [_targets([[0, 0, 40, 40], [50, 50, 90, 90]], [0.3, 0.8]), _targets([], [])]
    proposals = []
    for boxes in ([[1, 1, 40, 41], [52, 50, 90, 88], [0, 60, 20, 80]], [[10, 10, 30, 30]]):
        p = Instances((100, 100))
        p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        proposals.append(p)
    with EventStorage():
        out = heads._match_and_label_boxes(proposals, 2, targets)  # stage 2: IoU 0.7
    assert out[0].gt_classes.tolist() == [0, 0, 1]
    assert torch.allclose(out[0].gt_scores[:2], torch.tensor([0.3, 0.8]))
    assert out[1].gt_classes.tolist() == [1] and out[1].gt_scores.tolist() == [0.0]
    # DropLoss: every proposal carries its image's pseudo-boxes, zero-padded to the batch maximum
    assert out[0].image_gt_boxes.shape == (3, 2, 4) and out[1].image_gt_boxes.shape == (1, 2, 4)
    assert torch.equal(out[0].image_gt_boxes[2], targets[0].gt_boxes.tensor)
    assert not out[1].image_gt_boxes.any()


def test_training_forward_reports_every_stage_loss():
    heads = _heads()
    heads.train()
    features = {f: torch.randn(1, 128, 100 // s, 100 // s) for f, s in zip(["p2", "p3", "p4", "p5"], [4, 8, 16, 32])}
    t = _targets([[0, 0, 40, 40], [50, 50, 90, 90]], [0.3, 0.8])
    masks = torch.zeros(2, 100, 100, dtype=torch.bool)
    masks[0, :40, :40] = masks[1, 50:90, 50:90] = True
    t.gt_masks = BitMasks(masks)
    p = Instances((100, 100))
    p.proposal_boxes = Boxes(torch.tensor([[2.0, 2.0, 38.0, 42.0], [60.0, 10.0, 99.0, 30.0]]))
    p.objectness_logits = torch.zeros(2)
    with EventStorage():
        _, losses = heads(None, features, [p], [t])
    assert {f"loss_cls_stage{k}" for k in range(3)} <= set(losses) and "loss_mask" in losses
    assert all(torch.isfinite(v) for v in losses.values())
