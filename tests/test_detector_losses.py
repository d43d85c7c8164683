"""Soft-target / DropLoss losses of the pseudo-label ROI heads on hand-built proposals."""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from cad.modeling.losses import droploss_weights, elementwise_box_iou, soft_target_cross_entropy
from cad.modeling.roi_heads import PseudoLabelFastRCNNOutputLayers, PseudoLabelMaskRCNNConvUpsampleHead

torch.set_num_threads(1)

GT = torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 100.0]])


def _proposals(scores=(0.8, 0.3)):
    """One 128x128 image: 6 proposals, #0-#2 foreground (matched to GT 0, 1, 0), #3-#5 background.
    #3 has IoU 0.0023 with GT 0, #4 touches nothing, #5 has IoU 0.0093 with GT 1."""
    p = Instances((128, 128))
    p.proposal_boxes = Boxes(torch.tensor([
        [12.0, 8.0, 48.0, 52.0],
        [58.0, 62.0, 92.0, 98.0],
        [5.0, 10.0, 45.0, 55.0],
        [0.0, 0.0, 12.0, 12.0],     # inter 2x2=4 with GT0; union 1600+144-4=1740 -> 0.0023
        [100.0, 0.0, 120.0, 20.0],  # no overlap
        [88.0, 90.0, 120.0, 120.0], # inter 2x10=20 with GT1; union 1200+960-20=2140 -> 0.0093
    ]))
    matched = torch.tensor([0, 1, 0, 0, 0, 1])
    p.gt_classes = torch.tensor([0, 0, 0, 1, 1, 1])
    p.gt_boxes = Boxes(GT[matched])
    p.gt_scores = torch.tensor(scores)[matched]
    p.image_gt_boxes = GT[None].expand(len(p), 2, 4)
    return p


def _predictor(**kw):
    torch.manual_seed(0)
    args = dict(box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), num_classes=1, cls_agnostic_bbox_reg=True)
    stock = FastRCNNOutputLayers(ShapeSpec(channels=8), **args)
    ours = PseudoLabelFastRCNNOutputLayers(ShapeSpec(channels=8), **args, **kw)
    return stock, ours


def _predictions(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, generator=g), torch.randn(n, 4, generator=g) * 0.1


def test_soft_ce_matches_hand_computed_values():
    logits = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 0.0]])
    classes = torch.tensor([0, 0, 1])
    scores = torch.tensor([0.5, 0.25, 0.9])  # the background row's score is ignored
    p1 = torch.sigmoid(torch.tensor(2.0))  # softmax prob of fg in row 1
    expected = (
        math.log(2.0)
        - (0.25 * torch.log(p1) + 0.75 * torch.log(1 - p1))
        - torch.log(1 - torch.sigmoid(torch.tensor(2.0)))
    ) / 3
    assert torch.allclose(soft_target_cross_entropy(logits, classes, scores), expected)
    # a 0/1 weight removes a term but the mean stays over all 3 proposals
    w = torch.tensor([1.0, 0.0, 1.0])
    expected_w = (math.log(2.0) - torch.log(1 - torch.sigmoid(torch.tensor(2.0)))) / 3
    assert torch.allclose(soft_target_cross_entropy(logits, classes, scores, w), expected_w)


def test_score_one_and_no_droploss_equals_detectron2_stock_losses():
    stock, ours = _predictor(soft_targets=True, use_droploss=False)
    preds = _predictions()
    with EventStorage():
        a = stock.losses(preds, [_proposals((1.0, 1.0))])
        b = ours.losses(preds, [_proposals((1.0, 1.0))])
    for k in ("loss_cls", "loss_box_reg"):
        assert torch.allclose(a[k], b[k], rtol=1e-6), k
    assert b["loss_box_reg"] > 0


def test_score_half_halves_the_box_loss():
    stock, ours = _predictor(soft_targets=True)
    preds = _predictions()
    with EventStorage():
        full = stock.losses(preds, [_proposals()])["loss_box_reg"]
        half = ours.losses(preds, [_proposals((0.5, 0.5))])["loss_box_reg"]
    assert torch.allclose(half, 0.5 * full, rtol=1e-6)


def test_box_loss_is_weighted_per_matched_object():
    _, ours = _predictor(soft_targets=True)
    preds = _predictions()
    with EventStorage():
        both = ours.losses(preds, [_proposals((1.0, 1.0))])["loss_box_reg"]
        no_gt1 = ours.losses(preds, [_proposals((1.0, 0.0))])["loss_box_reg"]
        half_gt1 = ours.losses(preds, [_proposals((1.0, 0.5))])["loss_box_reg"]
    # proposal #1 is the only one matched to GT 1: its term is halved
    assert torch.allclose(half_gt1, no_gt1 + 0.5 * (both - no_gt1), rtol=1e-6)
    assert both > no_gt1


def test_droploss_removes_exactly_the_proposals_under_the_threshold():
    _, ours = _predictor(use_droploss=True, droploss_iou_thresh=0.005)
    stock, _ = _predictor()
    scores = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    preds = (scores, torch.zeros(6, 4))  # zero deltas: predicted boxes are the proposals
    with EventStorage():
        dropped = ours.losses(preds, [_proposals()])
        full = stock.losses(preds, [_proposals()])
    per = torch.nn.functional.cross_entropy(scores, torch.tensor([0, 0, 0, 1, 1, 1]), reduction="none")
    # thresh 0.005: #3 (IoU 0.0023) and #4 (IoU 0) are dropped, #5 (IoU 0.0093) is kept
    expected = (per[[0, 1, 2, 5]]).sum() / 6
    assert torch.allclose(dropped["loss_cls"], expected)
    assert torch.allclose(dropped["loss_box_reg"], full["loss_box_reg"])  # box loss untouched
    ours.droploss_iou_thresh = 0.01  # CutLER's value: #5 is dropped too
    with EventStorage():
        assert torch.allclose(ours.losses(preds, [_proposals()])["loss_cls"], per[[0, 1, 2]].sum() / 6)


def test_droploss_uses_strict_inequality_and_ignores_padding():
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 2.0, 1.0]])
    gt = torch.tensor([[0.0, 0.0, 8.0, 1.0], [0.0, 0.0, 0.0, 0.0]])  # IoU 0.25 with the first; a pad box
    assert elementwise_box_iou(pred[0], gt[0]) == 0.25
    image_gt = gt[None].expand(2, 2, 4)
    assert droploss_weights(pred, image_gt, 0.25).tolist() == [0.0, 0.0]
    assert droploss_weights(pred, image_gt, 0.2499).tolist() == [1.0, 1.0]
    assert droploss_weights(pred, torch.zeros(2, 0, 4), 0.01).tolist() == [0.0, 0.0]


def _mask_instances(scores):
    p = Instances((32, 32))
    p.proposal_boxes = Boxes(torch.tensor([[2.0, 2.0, 20.0, 20.0], [10.0, 8.0, 30.0, 30.0]]))
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:18, 5:15] = True
    masks[1, 12:30, 10:25] = True
    p.gt_masks = BitMasks(masks)
    p.gt_classes = torch.zeros(2, dtype=torch.int64)
    p.gt_scores = torch.tensor(scores)
    return p


@pytest.mark.parametrize("scores,factor", [((1.0, 1.0), 1.0), ((0.5, 0.5), 0.5)])
def test_mask_loss_weighting(scores, factor):
    logits = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with EventStorage():
        stock = mask_rcnn_loss(logits, [_mask_instances(scores)])
    ours = PseudoLabelMaskRCNNConvUpsampleHead.weighted_loss(logits, [_mask_instances(scores)])
    assert torch.allclose(ours, factor * stock, rtol=1e-6)


def test_mask_loss_weights_each_mask_by_its_score():
    logits = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    w = PseudoLabelMaskRCNNConvUpsampleHead.weighted_loss
    a, b = w(logits, [_mask_instances((1.0, 0.0))]), w(logits, [_mask_instances((0.0, 1.0))])
    assert torch.allclose(w(logits, [_mask_instances((1.0, 0.5))]), a + 0.5 * b, rtol=1e-6)
