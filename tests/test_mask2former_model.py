"""Mask2Former model: shapes, instance inference (incl. Q*K < detections), DINOv2 feature-pyramid config."""
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model

from cad.config import add_cad_config
from cad.modeling.mask2former.meta_arch import instance_inference

torch.set_num_threads(1)


def test_instance_inference_scores_and_small_topk():
    # 2 queries x 2 classes = 4 candidates < 100 requested detections: no crash, 4 outputs
    cls = torch.log(torch.tensor([[0.6, 0.2, 0.2], [0.1, 0.8, 0.1]]))
    masks = torch.full((2, 3, 3), -4.0)
    masks[0, 0, 0] = 2.0
    scores, classes, binary = instance_inference(cls, masks, num_classes=2, topk=100)
    assert len(scores) == 4
    order = scores.argsort(descending=True)
    sig = torch.sigmoid(torch.tensor(2.0))
    # best: query 0 class 0: 0.6 * mean sigmoid inside its 1-pixel mask
    assert classes[order[0]] == 0 and torch.isclose(scores[order[0]], 0.6 * sig)
    # query 1 has an empty mask -> score 0 for both its classes
    assert (scores[binary.flatten(1).sum(1) == 0] == 0).all()
    assert len(instance_inference(cls, masks, 2, topk=3)[0]) == 3


def _tiny_cfg():
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file("configs/GuidedDistillation/mask2former_tiny_synthetic_teacher.yaml")
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 64
    return cfg


def test_tiny_model_forward_train_and_eval():
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    model = build_model(cfg)
    from detectron2.structures import BitMasks, Instances

    inst = Instances((64, 80))
    inst.gt_classes = torch.tensor([1])
    m = torch.zeros(1, 64, 80, dtype=torch.bool)
    m[0, 10:30, 20:50] = True
    inst.gt_masks = BitMasks(m)
    batch = [{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8), "instances": inst}]
    losses = model(batch + batch, loss_groups=[("", 1.0, 1), ("_ssl", 2.0, 1)])
    n_pred = cfg.MODEL.MASK_FORMER.DEC_LAYERS
    assert len(losses) == 2 * 3 * n_pred and "loss_dice_0_ssl" in losses
    # identical images and targets: the _ssl group is exactly twice the plain group up to point sampling
    assert torch.isclose(losses["loss_ce_ssl"], 2 * losses["loss_ce"], rtol=1e-4)
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 32, "width": 40}])[0]["instances"]
    q, k = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert out.image_size == (32, 40) and len(out) == min(q * k, cfg.TEST.DETECTIONS_PER_IMAGE)
    assert out.pred_masks.shape[1:] == (32, 40)


def test_dinov2_gd_backbone_resizes_as_the_official_one():
    # The COCO DINOv2 configs with a tiny random DINOv2 (official backbone: res2..res5 from the
    # nearest-resized patch-token map, 1x1 convs to 128/256/512/1024 channels).
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file("configs/GuidedDistillation/coco/dinov2_teacher_1pct.yaml")
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "CAD.VIT.WEIGHTS", "random", "CAD.VIT.DEPTH", "1",
                         "CAD.VIT.EMBED_DIM", "24", "CAD.VIT.NUM_HEADS", "2"])
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (128, 4), "res3": (256, 8), "res4": (512, 16), "res5": (1024, 32)}
    seen = []
    backbone.model.patch_embed.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = backbone(x)
        # sides + 14 - side % 14 (the official get_divisible_size): 64 -> 70, 96 -> 98 (not 84, 98)
        assert seen == [(70, 98)]
        tokens = backbone.model.forward_features(torch.nn.functional.interpolate(x, size=(70, 98)))  # normed
        grid = tokens[:, 1:].reshape(1, 5, 7, 24).permute(0, 3, 1, 2)
        # nearest resize of the 5x7 token map to 16x24 (stride 4): row i <- floor(i * 5 / 16)
        rows, cols = torch.arange(16) * 5 // 16, torch.arange(24) * 7 // 24
        expected = backbone.convs[0](grid[:, :, rows][:, :, :, cols])
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {"res2": (16, 24), "res3": (8, 12), "res4": (4, 6), "res5": (2, 3)}
    assert torch.allclose(out["res2"], expected, atol=1e-5)


def test_all_guided_distillation_configs_load():
    import glob

    files = sorted(glob.glob("configs/GuidedDistillation/**/*.yaml", recursive=True))
    assert len(files) >= 20
    for f in files:
        cfg = get_cfg()
        add_cad_config(cfg)
        cfg.merge_from_file(f)
        assert cfg.CAD.TRAINER == "GuidedDistillationTrainer" and cfg.MODEL.META_ARCHITECTURE == "Mask2Former"
