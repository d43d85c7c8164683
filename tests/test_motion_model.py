"""Slot attention, Hungarian motion loss, pseudo-labels, late fusion and EMA of the DIOD/xMOD code."""
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from cad.config import add_cad_config
from cad.distillation.ema import ema_update
from cad.distillation.motion import lr_factor
from cad.modeling.motion.augment import color_augment, point_augment
from cad.modeling.motion.losses import fg_losses, hungarian_match, mask_loss, masked_mse
from cad.modeling.motion.meta_arch import DIOD, DIOD3D, XMOD
from cad.modeling.motion.networks import (
    BatchNorm2d, Encoder, SlotAttention, SlotVideoNet, bn_batch_statistics, norm_layer, position_grid,
)
from cad.modeling.motion.pseudo_labels import late_fusion, teacher_pseudo_labels

torch.set_num_threads(1)


def test_slot_attention_shapes_and_softmax_over_slots():
    torch.manual_seed(0)
    sa = SlotAttention(num_slots=5, dim=16, mlp_hidden=32)
    inputs = torch.randn(2, 30, 16)
    slots, attn = sa(inputs, sa.initial_slots(2))
    assert slots.shape == (2, 5, 16) and attn.shape == (2, 5, 30)
    torch.testing.assert_close(attn.sum(1), torch.ones(2, 30), atol=1e-6, rtol=0)
    # the initial slots are a fixed buffer [1, K, D] (DIOD's `slots`), saved in the state_dict, identical for every sample
    assert sa.state_dict()["slots"].shape == (1, 5, 16) and not any(n == "slots" for n, _ in sa.named_parameters())
    torch.testing.assert_close(sa.initial_slots(2)[0], sa.initial_slots(2)[1])


def test_batch_statistics_in_eval_mode_leave_running_statistics_alone():
    torch.manual_seed(0)
    bn = BatchNorm2d(3).eval()
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    running = bn(x)
    with bn_batch_statistics(bn, True):
        batch = bn(x)
    torch.testing.assert_close(batch, torch.nn.functional.batch_norm(x, None, None, training=True))
    assert not torch.allclose(batch, running)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0 and not bn.batch_stats


def test_joint_layernorm_is_tied_to_the_input_size_and_xmod_range_decoder_kernel():
    torch.manual_seed(0)
    net = SlotVideoNet(4, width=4, num_slots=3, dim=8, mlp_hidden=8, input_size=(16, 24))
    assert net.norm.weight.shape == (4 * 6, 8) and net.slot_attention.to_q.bias.shape == (8,)
    assert net.decoder.net[-1].weight.shape == (8, 4, 4, 4)  # xMOD: kernel = output channels
    assert net(torch.randn(1, 2, 4, 16, 24))["recon"].shape == (1, 2, 4, 16, 24)
    with pytest.raises(ValueError, match="built for 24 positions"):
        net(torch.randn(1, 2, 4, 32, 24))


def test_slot_attention_permutation_equivariance():
    torch.manual_seed(0)
    sa = SlotAttention(num_slots=6, dim=8, mlp_hidden=16)
    inputs, slots = torch.randn(1, 20, 8), torch.randn(1, 6, 8)
    out, attn = sa(inputs, slots)
    perm_s, perm_n = torch.randperm(6), torch.randperm(20)
    out_p, attn_p = sa(inputs[:, perm_n], slots[:, perm_s])
    torch.testing.assert_close(out_p, out[:, perm_s], atol=1e-5, rtol=1e-5)  # slot order equivariant
    torch.testing.assert_close(attn_p, attn[:, perm_s][:, :, perm_n], atol=1e-6, rtol=1e-5)  # input order


def test_video_net_shapes_stride4_and_background_slot():
    torch.manual_seed(0)
    net = SlotVideoNet(in_channels=4, width=4, num_slots=3, dim=8, mlp_hidden=8, decoder_hidden=4, input_size=(16, 24))
    out = net(torch.randn(2, 3, 4, 16, 24))
    assert out["masks"].shape == (2, 3, 3, 4, 6) and out["recon"].shape == (2, 3, 4, 16, 24)
    torch.testing.assert_close(out["fg"], 1 - out["masks"][:, :, -1])


def test_group_norm_encoder_is_batch_and_mode_independent():
    torch.manual_seed(0)
    enc = Encoder(3, width=8, norm="GN")
    x = torch.randn(3, 3, 16, 24)
    together = enc.train()(x)
    assert together.shape == (3, 64, 4, 6)
    torch.testing.assert_close(enc(x[1:2]), together[1:2], atol=1e-5, rtol=1e-5)  # no batch statistics
    torch.testing.assert_close(enc.eval()(x), together, atol=1e-5, rtol=1e-5)  # training == evaluation
    assert isinstance(norm_layer("BN")(8), BatchNorm2d) and norm_layer("GN")(8).num_groups == 8
    with pytest.raises(ValueError, match="unknown encoder norm"):
        norm_layer("LN")


def test_more_slot_iterations_per_frame_refine_the_same_slots():
    torch.manual_seed(0)
    net = SlotVideoNet(in_channels=3, width=4, num_slots=3, dim=8, mlp_hidden=8, decoder_hidden=4, input_size=(16, 24))
    x = torch.randn(1, 2, 3, 16, 24)
    one = net(x)["masks"]
    net.slot_iters = 2
    two = net(x)["masks"]
    assert two.shape == one.shape and not torch.allclose(one, two)
    # by hand: frame 0 = pre-iteration + 2 iterations with the same module
    sa = net.slot_attention
    feats = net.encoder(x[0])
    tokens = torch.relu(net.gru(feats[None])).flatten(3).transpose(2, 3) + net.pos(position_grid(4, 6))
    tokens = net.mlp(net.norm(tokens))
    slots = sa(tokens[:, 0], sa.initial_slots(1))[0]
    slots = sa(tokens[:, 0], slots)[0]
    torch.testing.assert_close(two[:, 0].reshape(1, 3, -1), sa(tokens[:, 0], slots)[1])


def test_hungarian_match_hand_built():
    # three slots, two GT objects: slot 2 fits object 0, slot 0 fits object 1
    gt = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.float)
    masks = torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.9, 0.8], [0.3, 0.3, 0.3, 0.3, 0.3, 0.3], [0.9, 0.7, 0.2, 0.1, 0.1, 0.1]])
    rows, cols = hungarian_match(masks, gt)
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 2, 1: 0}


def test_mask_loss_burn_in_weights_and_teacher_filter():
    # one frame, K=3 (slot 2 = background), one GT object of 2 px out of 4
    masks = torch.tensor([[0.8, 0.6, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.6, 0.5]]).reshape(1, 1, 3, 2, 2)
    ids = torch.tensor([7, 7, 0, 0]).reshape(1, 1, 2, 2)
    loss, union = mask_loss(masks, ids)
    m = masks[0, 0, 0].reshape(-1) * 0.999 + 1e-8  # slot 0 is the better match
    g = torch.tensor([1.0, 1, 0, 0])
    w = 2 - 0.5  # burn-in: 2 - fg fraction
    expect = -(w * g * m.log() + (1 - g) * (1 - m).log()).mean()
    torch.testing.assert_close(loss, expect)
    assert union.reshape(-1).tolist() == [1, 1, 0, 0]
    # teacher confidence 0.95 >= 0.9: weight 1 + 0.95; 0.85 < 0.9: object dropped
    conf = torch.tensor([0.95, 0.95, 0.0, 0.0]).reshape(1, 1, 2, 2)
    loss, _ = mask_loss(masks, ids, conf, 0.9)
    torch.testing.assert_close(loss, -((1.95 * g * m.log() + (1 - g) * (1 - m).log())).mean())
    loss, union = mask_loss(masks, ids, conf - 0.1, 0.9)
    assert loss.item() == 0 and union.sum() == 0


def test_fg_losses_and_masked_mse():
    fg = torch.tensor([0.5, 0.25]).reshape(1, 1, 1, 2)
    nll, reg = fg_losses(fg, torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2))
    assert math.isclose(nll.item(), -math.log(0.5) / 2, rel_tol=1e-6) and math.isclose(reg.item(), 0.375)
    target = torch.tensor([0.0, 0.5, 0.0, 0.2])
    assert math.isclose(masked_mse(torch.tensor([9.0, 0.4, -3.0, 0.4]), target).item(), (0.01 + 0.04) / 2, rel_tol=1e-6)


def test_pseudo_labels_components_and_min_area():
    k = 3  # slot 2 = background
    lab = np.full((8, 8), 2)
    lab[0:4, 0:4] = 0  # 16 px component of slot 0
    lab[6:8, 6:8] = 0  # second component of slot 0: 4 px -> dropped with min_area 10 (kept with 3)
    lab[0:4, 5:8] = 1  # 12 px of slot 1
    masks = torch.nn.functional.one_hot(torch.from_numpy(lab), k).permute(2, 0, 1).float()[None, None]
    ids = teacher_pseudo_labels(masks, min_area=10)[0, 0]
    assert len(torch.unique(ids[ids > 0])) == 2 and (ids[6:, 6:] == 0).all() and (ids[0:4, 0:4] > 0).all()
    assert ids[0, 0] != ids[0, 6]
    ids = teacher_pseudo_labels(masks, min_area=3)[0, 0]
    assert len(torch.unique(ids[ids > 0])) == 3  # slot 0's two components are separate objects


def test_late_fusion_rule():
    k = 3
    a = torch.tensor([[0, 0, 2, 2], [1, 1, 2, 2]])  # 2D argmax labels
    b = torch.tensor([[0, 2, 2, 2], [2, 2, 2, 1]])  # 3D argmax labels
    oh = lambda lab: torch.nn.functional.one_hot(lab, k).permute(2, 0, 1).float()  # noqa: E731
    fused = late_fusion(oh(a), oh(b), 0.1)
    # 2D slot 0 (2 px) vs 3D slot 0 (1 px): IoU 0.5 -> union; vs 3D slot 2 (6 px): IoU 1/7 > 0.1 -> union too
    assert fused[0].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # 2D slot 1 ({(1,0),(1,1)}) overlaps 3D slot 2 by 2 px: IoU 2/6 -> union with it; 3D slot 1 IoU 0
    assert fused[1].tolist() == [[0, 1, 1, 1], [1, 1, 1, 0]]
    # with a threshold above every IoU, nothing matches and every 2D slot ends up empty
    assert late_fusion(oh(a), oh(b), 0.9).sum() == 0


def test_ema_update_whole_state_dict():
    t, s = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        t.weight.fill_(1.0)
        s.weight.fill_(3.0)
        s.running_mean.fill_(10.0)
        s.num_batches_tracked.fill_(7)
    ema_update(t, s, 0.996)
    torch.testing.assert_close(t.weight, torch.full((2,), 0.996 + 0.004 * 3))
    torch.testing.assert_close(t.running_mean, torch.full((2,), 0.04))  # BN statistics follow too
    assert int(t.num_batches_tracked) == 7


def test_lr_factor_diod_and_xmod_schedules():
    assert lr_factor(0, 3000, 50000) == pytest.approx(1 / 3000)
    assert lr_factor(49999, 3000, 50000) == pytest.approx(0.5, rel=1e-4)
    assert lr_factor(2998, 3000, 50000) == pytest.approx(0.5 ** (2998 / 50000) * 2999 / 3000)  # DIOD: decay in warmup
    assert lr_factor(2998, 3000, 50000, False) == pytest.approx(2999 / 3000)  # xMOD: linear warmup only
    assert lr_factor(2999, 3000, 50000, False) == lr_factor(2999, 3000, 50000) == pytest.approx(0.5 ** (2999 / 50000))


def test_augmentations_shapes_and_point_drop():
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(2, 3, 3, 8, 8)
    out = color_augment(clips, (0.4, 0.4, 0.4, 0.1), 1.0, 0.0, 0.0, g)
    assert out.shape == clips.shape and not torch.equal(out, clips)
    torch.testing.assert_close(color_augment(clips, (0.4, 0.4, 0.4, 0.1), 0.0, 0.0, 0.0, g), clips)
    rng = torch.rand(1, 2, 4, 20, 20) * 0.9 + 0.05
    rng[..., :5, :] = 0
    dropped = point_augment(rng, 1.0, 0.0, g)
    valid = dropped[:, :, 0] > 0
    assert not valid[..., :5, :].any() and valid.float().mean() == 0  # drop prob 1 -> all points dropped
    jit = point_augment(rng, 0.0, 1.0, g)
    assert ((jit[:, :, 0] > 0) == (rng[:, :, 0] > 0)).all()
    torch.testing.assert_close(jit[:, :, 3], jit[:, :, :3].norm(dim=2).clamp(1e-3, 1 - 1e-3) * (rng[:, :, 0] > 0))


def _tiny_cfg(arch: str):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = arch
    m = cfg.CAD.MOTION
    m.ENCODER_WIDTH, m.NUM_SLOTS, m.SLOT_DIM, m.MLP_HIDDEN, m.DECODER_DIM = 4, 4, 8, 8, 4
    m.CLIP_LENGTH = 2
    m.INPUT_SIZE = (16, 32)
    return cfg


@pytest.mark.parametrize("cls", [DIOD, XMOD, DIOD3D])
def test_meta_arch_losses_distillation_and_inference(cls):
    torch.manual_seed(0)
    model = cls(_tiny_cfg(cls.__name__))
    motion = torch.zeros(2, 16, 32, dtype=torch.long)
    motion[:, 4:10, 4:12] = 3
    batch = [{"image": torch.randint(0, 255, (2, 3, 16, 32), dtype=torch.uint8), "motion_masks": motion,
              "range": torch.rand(2, 4, 16, 32)}]
    model.train()
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values()) and not any("teacher" in k for k in losses)
    model.start_distillation()
    losses = model(batch)
    assert any("teacher" in k for k in losses)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teachers.parameters())
    assert not any(t.training for t in model.teachers.values())  # teachers stay in eval mode
    model.eval()
    out = model(batch)
    assert out[0]["masks"].shape == (2, 4, 4, 8)


def test_diod3d_motion_loss_is_not_filtered_by_its_own_teacher():
    """xMOD 3d_ts (train/losses.compute_loss): the 3D motion-mask loss is filtered by the 2D teacher's
    fg, and 3d_ts has none, so it keeps the burn-in weighting; the pseudo-label loss is added.
    DIOD filters its motion masks with its own teacher (trainPD_ts.computeWBCE_TS)."""
    motion = torch.zeros(1, 2, 16, 32, dtype=torch.long)
    motion[..., 4:12, 4:16] = 3
    batch = [{"image": torch.randint(0, 255, (2, 3, 16, 32), dtype=torch.uint8), "motion_masks": motion[0],
              "range": torch.rand(2, 4, 16, 32) * (torch.rand(2, 1, 16, 32) > 0.3)}]
    for cls, same in ((DIOD3D, True), (DIOD, False)):
        torch.manual_seed(0)
        model = cls(_tiny_cfg(cls.__name__)).train()
        torch.manual_seed(1)
        burn_in = model(batch)
        model.start_distillation()
        torch.manual_seed(1)
        distilled = model(batch)
        assert bool(distilled["loss_mask"] == burn_in["loss_mask"]) is same and "loss_teacher" in distilled
        assert set(burn_in) == {"loss_recon", "loss_mask", "loss_nll", "loss_reg"}


def test_meta_arch_is_configurable_without_a_config():
    torch.manual_seed(0)
    cfg = _tiny_cfg("DIOD")
    args = DIOD.from_config(cfg)
    assert set(args["loss_weights"]) == {"recon", "mask", "nll", "reg", "teacher"}
    model = DIOD(**{**args, "eval_bn_batch_stats": False}).eval()
    assert not hasattr(model, "m") and not model.eval_bn_batch_stats
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (2, 3, 16, 32), dtype=torch.uint8)}])[0]
    assert out["masks"].shape[:2] == (2, cfg.CAD.MOTION.NUM_SLOTS)
    with pytest.raises(ValueError, match="needs networks for"):
        XMOD(**{**args, "networks": args["networks"]})
