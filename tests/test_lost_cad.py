"""LOST+CAD: the torchvision -> Detectron2 ResNet conversion of its backbone (its training is
tests/test_learning.py::test_lost_cad_overfits_lost_boxes)."""
import numpy as np
import torch

from cad.modeling.torchvision_resnet import convert_torchvision_checkpoint

torch.set_num_threads(1)


def test_torchvision_resnet_conversion(tmp_path):
    import pickle

    import torchvision
    from detectron2.config import get_cfg
    from detectron2.modeling import build_resnet_backbone
    from detectron2.layers import ShapeSpec

    resnet = torchvision.models.resnet50()
    torch.save(resnet.state_dict(), tmp_path / "rn50.pth")
    count = convert_torchvision_checkpoint(tmp_path / "rn50.pth", tmp_path / "rn50.pkl")
    converted = pickle.loads((tmp_path / "rn50.pkl").read_bytes())["model"]
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    expected = {k for k in backbone.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(converted) == expected and count == len(expected)
    np.testing.assert_array_equal(converted["res2.0.shortcut.norm.running_mean"], resnet.layer1[0].downsample[1].running_mean.numpy())
    np.testing.assert_array_equal(converted["stem.conv1.weight"], resnet.conv1.weight.detach().numpy())
