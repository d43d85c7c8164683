"""LOST+CAD: the torchvision -> Detectron2 ResNet conversion of its backbone (its training is
tests/test_learning.py::test_lost_cad_overfits_lost_boxes)."""
import re

import numpy as np
import torch

from cad.checkpoint.convert import convert_torchvision_checkpoint

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


def test_convert_tool_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util
    import sys

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("convert_tool", REPO / "tools" / "convert_torchvision_resnet.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    torch.save([1, 2], tmp_path / "list.pth")
    torch.save({"fc.weight": torch.zeros(1), "head.w": torch.zeros(1)}, tmp_path / "vit.pth")
    torch.save({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1), "head.w": torch.zeros(1)},
               tmp_path / "extra.pth")
    resnet = r"a torchvision ResNet \(e.g. DINO's dino_resnet50_pretrain.pth\), a backbone initialisation \(torchvision_resnet layout\)"
    cases = [
        ("missing.pth", rf"error: weights file '.*missing.pth' \(torchvision ResNet\) does not exist"),
        ("notes.pth", r"error: cannot read '.*notes.pth' as a checkpoint \(UnpicklingError: .*\)$"),
        ("list.pth", rf"error: '.*list.pth' holds a list, not {resnet}$"),
        ("vit.pth", rf"error: '.*vit.pth' \(top-level keys: fc.weight, head.w\) is not {resnet}$"),
        ("extra.pth", r"error: '.*extra.pth' \(torchvision_resnet layout\): 'head.w' is not a torchvision ResNet key$"),
    ]
    for src, pattern in cases:
        monkeypatch.setattr(sys, "argv", ["convert", str(tmp_path / src), str(tmp_path / "out.pkl")])
        assert tool.main() == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.match(pattern, err), err
    assert not (tmp_path / "out.pkl").exists()
