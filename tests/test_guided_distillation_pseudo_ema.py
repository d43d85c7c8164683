"""Pseudo-label filter rules, EMA update and the burn-in switch of Guided Distillation."""
import math

import pytest
import torch
from detectron2.structures import ImageList
from torch import nn

from cad.distillation.ema import ema_update, teacher_decay
from cad.distillation.guided import filter_pseudo_labels, pseudo_instances

torch.set_num_threads(1)

BIG = 20.0


def _logits(rows):
    """Rows of class probabilities -> logits (log-probs) with the same softmax."""
    return torch.log(torch.tensor(rows))


def test_filter_rules_hand_built():
    # K = 2 classes + no-object (last column)
    logits = _logits([
        [0.80, 0.10, 0.10],  # kept: class 0, p=0.8 > 0.7
        [0.05, 0.75, 0.20],  # kept: class 1
        [0.25, 0.05, 0.70],  # dropped: argmax is no-object
        [0.69, 0.11, 0.20],  # dropped: p=0.69 <= 0.7
        [0.60, 0.30, 0.10],  # dropped: p=0.6, and used for the strict-inequality check below
        [0.90, 0.05, 0.05],  # dropped: soft area 5 <= 5
        [0.90, 0.05, 0.05],  # kept: soft area 6 > 5
    ])
    masks = torch.full((7, 4, 4), -BIG)
    masks[0, :2, :2] = BIG  # 4 px... plus half-prob pixels below
    masks[0, 2, :] = 0.0  # 4 pixels at sigmoid 0.5 -> soft area 6, binarised: only the 4 confident
    masks[1, :, :2] = BIG
    masks[2, :, :] = BIG
    masks[3, :, :] = BIG
    masks[4, :, :] = BIG
    masks[5].view(-1)[:5] = BIG  # soft area ~5.0
    masks[6].view(-1)[:6] = BIG
    idx, labels, probs = filter_pseudo_labels(logits, masks, class_thresh=0.7, mask_thresh=0.5, min_area=5)
    assert idx.tolist() == [0, 1, 6]
    assert labels.tolist() == [0, 1, 0]
    binary = probs > 0.5
    assert binary[0].sum() == 4 and binary[1].sum() == 8 and binary[2].sum() == 6
    # a stricter class threshold keeps fewer; a looser area threshold keeps query 5 too
    assert filter_pseudo_labels(logits, masks, 0.85, 0.5, 5)[0].tolist() == [6]
    assert filter_pseudo_labels(logits, masks, 0.7, 0.5, 4.9)[0].tolist() == [0, 1, 5, 6]
    # "> thresh" is strict: a probability equal to the threshold is dropped
    p4 = logits[4].softmax(-1).max().item()
    assert 4 not in filter_pseudo_labels(logits, masks, p4, 0.5, 5)[0].tolist()
    assert 4 in filter_pseudo_labels(logits, masks, p4 - 1e-4, 0.5, 5)[0].tolist()


def test_pseudo_instances_crop_padding_and_resize():
    # image 6x8 padded to 8x8; mask logits at 1/2 resolution (4x4); query covers the left half
    images = ImageList(torch.zeros(1, 3, 8, 8), [(6, 8)])
    logits = _logits([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]])[None]
    masks = torch.full((1, 2, 4, 4), -BIG)
    masks[0, 0, :, :2] = BIG
    masks[0, 0, :, 2:] = -BIG
    masks[0, 0, 3, :] = BIG  # row in the padding: cropped away
    inst = pseudo_instances({"pred_logits": logits, "pred_masks": masks}, images, 0.7, 0.5, 1.0)[0]
    assert inst.image_size == (6, 8)
    assert inst.gt_classes.tolist() == [0]
    assert inst.gt_masks.shape == (1, 6, 8) and inst.gt_masks.dtype == torch.bool
    assert inst.gt_masks[0, :, :4].all() and not inst.gt_masks[0, :, 4:].any()


class _Net(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(value)
            self.bn.running_mean.fill_(value)
        self.bn.num_batches_tracked.fill_(int(value))


def test_ema_update_formula_and_buffers():
    teacher, student = _Net(1.0), _Net(3.0)
    ema_update(teacher, student, decay=0.9)
    # t = 0.9*1 + 0.1*3 = 1.2 for parameters and float buffers; integer buffers copied
    assert torch.allclose(teacher.lin.weight, torch.full((2, 2), 1.2))
    assert torch.allclose(teacher.bn.running_mean, torch.full((2,), 1.2))
    assert teacher.bn.num_batches_tracked.item() == 3
    assert torch.equal(student.lin.weight, torch.full((2, 2), 3.0))  # student untouched
    ema_update(teacher, student, decay=0.0)  # exact copy
    for (_, t), (_, s) in zip(teacher.state_dict().items(), student.state_dict().items()):
        assert torch.equal(t, s)


def test_ema_rejects_mismatched_models():
    with pytest.raises(ValueError, match="state keys"):
        ema_update(_Net(0.0), nn.Linear(2, 2), 0.5)


@pytest.mark.parametrize("burnin", [0, 3, 10])
def test_burnin_switch_exactly_at_burnin_iter(burnin):
    decays = [teacher_decay(i, burnin, 0.9996) for i in range(burnin + 3)]
    assert all(d is None for d in decays[:burnin])  # frozen stage-1 teacher during guided burn-in
    assert decays[burnin] == 0.0  # copy of the student at BURNIN_ITER
    assert all(math.isclose(d, 0.9996) for d in decays[burnin + 1:])  # EMA afterwards


def test_step_updates_teacher_only_from_burnin_iter():
    from cad.distillation.guided import GuidedDistillationStep

    step = GuidedDistillationStep.__new__(GuidedDistillationStep)  # only the teacher-update state
    student, teacher = _Net(3.0), _Net(1.0)
    step.model, step.teacher, step.burnin_iter, step.ema_decay = student, teacher, 2, 0.5
    for it in (0, 1):
        step.update_teacher(it)
        assert torch.equal(teacher.lin.weight, torch.full((2, 2), 1.0))  # frozen stage-1 teacher
    step.update_teacher(2)
    assert torch.equal(teacher.lin.weight, student.lin.weight)  # copy at BURNIN_ITER
    with torch.no_grad():
        student.lin.weight.fill_(5.0)
    step.update_teacher(3)
    assert torch.allclose(teacher.lin.weight, torch.full((2, 2), 0.5 * 3.0 + 0.5 * 5.0))  # EMA after
