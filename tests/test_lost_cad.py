"""LOST+CAD: the R50-C4 config trains on LOST boxes through train_net and is scored by CorLoc."""
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from cad.data.coco import register_class_agnostic_coco
from cad.data.voc import register_class_agnostic_voc
from cad.engine.cli import train_argument_parser
from cad.engine.train import main
from cad.modeling.torchvision_resnet import convert_torchvision_checkpoint

torch.set_num_threads(1)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "LOST" / "faster_rcnn_R_50_C4_lost_cad_voc07.yaml"


def _tiny_voc(root: Path):
    voc = root / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = ["000001", "000002"]
    (voc / "ImageSets/Main/trainval.txt").write_text("\n".join(ids) + "\n")
    images, annotations = [], []
    for k, image_id in enumerate(ids):
        image = np.full((96, 128, 3), 90, dtype=np.uint8)
        image[20:70, 30:90] = rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)
        cv2.imwrite(str(voc / "JPEGImages" / f"{image_id}.jpg"), image)
        box = "<xmin>31</xmin><ymin>21</ymin><xmax>90</xmax><ymax>70</ymax>"
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>128</width><height>96</height></size>"
            f"<object><name>dog</name><bndbox>{box}</bndbox></object></annotation>"
        )
        images.append({"id": k + 1, "file_name": f"{image_id}.jpg", "height": 96, "width": 128})
        annotations.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [30, 20, 60, 50], "area": 3000, "iscrowd": 0, "score": 1.0})
    pseudo = root / "pseudo_labels" / "lost_voc07_trainval.json"
    pseudo.parent.mkdir()
    pseudo.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}))
    return voc, pseudo


def test_lost_cad_config_trains_and_reports_corloc(tmp_path):
    voc, pseudo = _tiny_voc(tmp_path)
    register_class_agnostic_voc("lost_cad_test_gt", voc, "trainval", 2007, "corloc")
    register_class_agnostic_coco("lost_cad_test_boxes", pseudo, voc / "JPEGImages", "test")
    opts = [
        "MODEL.WEIGHTS", "", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "128", "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "CAD.NUM_THREADS", "1",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ]
    common = ["--config-file", str(CONFIG), "--train-dataset", "lost_cad_test_boxes", "--test-dataset", "lost_cad_test_gt"]
    main(train_argument_parser().parse_args(common + opts))
    weights = tmp_path / "out" / "model_final.pth"
    assert weights.exists()
    eval_opts = opts[:1] + [str(weights)] + opts[2:]
    results = main(train_argument_parser().parse_args(common + ["--eval-only"] + eval_opts))
    corloc = results["corloc"]["CorLoc"]
    assert 0.0 <= corloc <= 100.0 and corloc in (0.0, 50.0, 100.0)


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
    cases = [
        ("missing.pth", f"error: cannot read '{tmp_path / 'missing.pth'}': No such file or directory"),
        ("notes.pth", f"error: '{tmp_path / 'notes.pth'}' is not a PyTorch checkpoint, or cut short (UnpicklingError)"),
        ("list.pth", f"error: '{tmp_path / 'list.pth'}' holds a list, not a state dict"),
        ("vit.pth", "error: 'head.w' is not a torchvision ResNet key"),
    ]
    for src, message in cases:
        monkeypatch.setattr(sys, "argv", ["convert", str(tmp_path / src), str(tmp_path / "out.pkl")])
        assert tool.main() == 2
        assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "out.pkl").exists()
