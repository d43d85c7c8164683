"""Hungarian matcher on hand-built costs; set criterion against a naive per-query loop."""
import math

import torch
from detectron2.projects.point_rend.point_features import get_uncertain_point_coords_with_randomness, point_sample

from cad.modeling.mask2former.criterion import SetCriterion
from cad.modeling.mask2former.losses import mask_uncertainty
from cad.modeling.mask2former.matcher import HungarianMatcher, matching_cost, solve_assignment

torch.set_num_threads(1)


def test_solve_assignment_hand_built():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = solve_assignment(cost)
    # optimum 1+2+2=5: q0->t1? no: q0->t1 (1), q1->t0 (2), q2->t2 (2) = 5
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
    rows, cols = solve_assignment(cost[:, :2])  # more queries than targets
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]


def test_matching_cost_formula():
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0]])  # softmax = (0.6, 0.2, 0.2)
    pred = torch.tensor([[0.0, 0.0]])  # sigmoid 0.5 everywhere
    tgt = torch.tensor([[1.0, 0.0]])
    cost = matching_cost(logits, pred, torch.tensor([0]), tgt, cost_class=2.0, cost_mask=5.0, cost_dice=5.0)
    bce = math.log(2.0)  # BCE of logit 0 against either label
    dice = 1 - (2 * 0.5 + 1) / (1.0 + 1.0 + 1)
    assert math.isclose(cost.item(), 5 * bce + 2 * (-0.6) + 5 * dice, rel_tol=1e-6)


def test_matcher_recovers_permutation():
    torch.manual_seed(0)
    h = w = 16
    tgt = torch.zeros(3, h, w)
    tgt[0, :8, :8] = 1
    tgt[1, 8:, :] = 1
    tgt[2, :8, 8:] = 1
    order = torch.tensor([2, 0, 3, 1])  # query q predicts target order[q] (3 = empty)
    pred = torch.full((4, h, w), -10.0)
    for q, t in enumerate(order.tolist()):
        if t < 3:
            pred[q][tgt[t] > 0] = 10.0
    logits = torch.zeros(1, 4, 4)
    outputs = {"pred_logits": logits, "pred_masks": pred[None]}
    targets = [{"labels": torch.tensor([0, 1, 2]), "masks": tgt}]
    rows, cols = HungarianMatcher(num_points=200)(outputs, targets)[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 2, 1: 0, 3: 1}


class _FixedMatcher(torch.nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


def _naive_losses(logits, masks, targets, indices, num_classes, eos, num_points, seed):
    """Per-query loop: CE with class weights, BCE and dice on the same sampled points."""
    ce_num, ce_den = 0.0, 0.0
    for b in range(logits.shape[0]):
        match = {int(s): int(t) for s, t in zip(*indices[b])}
        for q in range(logits.shape[1]):
            label = int(targets[b]["labels"][match[q]]) if q in match else num_classes
            w = eos if label == num_classes else 1.0
            ce_num += -w * torch.log_softmax(logits[b, q], -1)[label]
            ce_den += w
    src = torch.cat([masks[b][s] for b, (s, _) in enumerate(indices)])[:, None]
    tgt = torch.cat([targets[b]["masks"][t] for b, (_, t) in enumerate(indices)])[:, None]
    torch.manual_seed(seed)
    coords = get_uncertain_point_coords_with_randomness(src, mask_uncertainty, num_points, 3.0, 0.75)
    n = float(len(src))
    bce, dice = 0.0, 0.0
    for i in range(len(src)):
        lg = point_sample(src[i : i + 1], coords[i : i + 1], align_corners=False).flatten()
        lb = point_sample(tgt[i : i + 1], coords[i : i + 1], align_corners=False).flatten()
        p = lg.sigmoid()
        bce += (-(lb * torch.log(p) + (1 - lb) * torch.log(1 - p))).mean()
        dice += 1 - (2 * (p * lb).sum() + 1) / (p.sum() + lb.sum() + 1)
    return ce_num / ce_den, bce / n, dice / n


def test_criterion_equals_naive_loop():
    g = torch.Generator().manual_seed(1)
    num_classes, q, h, w = 3, 5, 12, 10
    logits = torch.randn(2, q, num_classes + 1, generator=g)
    masks = torch.randn(2, q, h, w, generator=g) * 3
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": (torch.rand(2, h, w, generator=g) > 0.5).float()},
        {"labels": torch.tensor([1]), "masks": (torch.rand(1, h, w, generator=g) > 0.5).float()},
    ]
    indices = [(torch.tensor([3, 0]), torch.tensor([0, 1])), (torch.tensor([4]), torch.tensor([0]))]
    crit = SetCriterion(num_classes, _FixedMatcher(indices), eos_coef=0.1, num_points=50)
    torch.manual_seed(7)
    losses = crit({"pred_logits": logits, "pred_masks": masks}, targets)
    ce, bce, dice = _naive_losses(logits, masks, targets, indices, num_classes, 0.1, 50, seed=7)
    torch.testing.assert_close(losses["loss_ce"], ce.to(losses["loss_ce"]))
    torch.testing.assert_close(losses["loss_mask"], bce)
    torch.testing.assert_close(losses["loss_dice"], dice)


def test_criterion_aux_and_no_targets():
    q, k = 4, 2
    logits = torch.randn(1, q, k + 1, requires_grad=True)
    masks = torch.randn(1, q, 8, 8, requires_grad=True)
    outputs = {"pred_logits": logits, "pred_masks": masks, "aux_outputs": [{"pred_logits": logits, "pred_masks": masks}]}
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}]
    losses = SetCriterion(k, HungarianMatcher(num_points=16), num_points=16)(outputs, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    sum(losses.values()).backward()  # an image without targets still gives a graph
    assert losses["loss_mask"].item() == 0.0 and logits.grad is not None
