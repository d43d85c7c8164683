"""Detectron2 backbone wrappers of the DINO/DINOv2 ViTs: feature names, shapes and strides."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model

import cad  # noqa: F401  (registers the backbones)
from cad.config import add_cad_config

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cfg(arch, name):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.CAD.VIT.ARCH = arch
    cfg.CAD.VIT.WEIGHTS = "random"
    cfg.CAD.VIT.DEPTH, cfg.CAD.VIT.EMBED_DIM, cfg.CAD.VIT.NUM_HEADS = 1, 32, 2
    return cfg


@pytest.mark.parametrize("arch,stride", [("dino_vits16", 16), ("dino_vits8", 8), ("dinov2_vits14_reg", 16)])
def test_single_scale_backbone(arch, stride):
    backbone = build_backbone(_cfg(arch, "build_vit_backbone"))
    assert backbone.output_shape()["vit"].stride == stride and backbone.output_shape()["vit"].channels == 32
    assert backbone.size_divisibility == stride
    out = backbone(torch.randn(2, 3, 4 * stride, 3 * stride))
    assert out["vit"].shape == (2, 32, 4, 3)
    with pytest.raises(ValueError, match="multiple of the backbone stride"):
        backbone(torch.randn(1, 3, 4 * stride + 2, 3 * stride))


@pytest.mark.parametrize("arch", ["dino_vits16", "dino_vits8", "dinov2_vits14"])
def test_simple_feature_pyramid_shapes_and_strides(arch):
    cfg = _cfg(arch, "build_vit_sfp_backbone")
    cfg.CAD.VIT.PYRAMID_OUT_CHANNELS = 16
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert all(v.channels == 16 for v in shapes.values())
    assert backbone.size_divisibility == 64
    out = backbone(torch.randn(1, 3, 128, 192))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"p{i}": (1, 16, 128 >> i, 192 >> i) for i in range(2, 7)
    }


def test_vit_mask_rcnn_config_trains_one_step():
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "Base-RCNN-ViT-SFP-cad.yaml"))
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.MASK_ON", "True", "CAD.VIT.ARCH", "dino_vits16", "CAD.VIT.WEIGHTS", "random",
         "CAD.VIT.DEPTH", "1", "CAD.VIT.EMBED_DIM", "32", "CAD.VIT.NUM_HEADS", "2", "CAD.VIT.PYRAMID_OUT_CHANNELS", "32",
         "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16"]
    )
    model = build_model(cfg)
    model.train()
    from detectron2.structures import BitMasks, Boxes, Instances

    instances = Instances((128, 128))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0]]))
    instances.gt_classes = torch.tensor([0])
    mask = torch.zeros(1, 128, 128, dtype=torch.bool)
    mask[0, 20:90, 10:60] = True
    instances.gt_masks = BitMasks(mask)
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        losses = model([{"image": torch.randint(0, 255, (3, 128, 128)).float(), "instances": instances}])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert model.backbone.net.vit.blocks[0].attn.qkv.weight.grad is not None
