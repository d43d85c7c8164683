"""LOST with every backbone and option of valeoai/LOST's README and main_lost.py: ResNet-50 (DINO or
ImageNet) and VGG16 trunks, --which_features k|q|v, the DINO-seg baseline, --no_hard, the fms /
seed_expansion figures, and CorLoc of any predictions file (main_corloc_evaluation.py).

Checked against the official code on random weights (main_lost.py's feature paths and
object_discovery.py run in /tmp: ViT q/k/v and CLS attention within 1e-5, ResNet-50 (dilation
1/2/4) and VGG16 features within 1e-4, equal boxes for k/q/v, DINO-seg and every CNN on 4 images,
and `lost()` with CNN scales equal on 200 random feature maps); the tests below pin those rules
with hand-written references.
"""
import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog

from cad.backbones.cnn import build_cnn, cnn_features
from cad.backbones.features import extract_features, preprocess_lost
from cad.backbones.vit import DINO_INTERPOLATE_OFFSET, save_random_checkpoint
from cad.checkpoint import CheckpointError
from cad.discovery.lost import LOST, dino_seg, lost
from cad.evaluation.corloc import dataset_gt_boxes

SMALL = dict(depth=2, embed_dim=48, num_heads=2)


def _image(h=80, w=112, seed=0):
    rng = np.random.default_rng(seed)
    image = np.clip(rng.integers(60, 200, 3) + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    image[h // 4 : h // 4 + h // 2, w // 3 : w // 3 + w // 3] = rng.integers(0, 255, (h // 2, w // 3, 3))
    return image


@pytest.mark.parametrize("arch, dilate, stride, channels", [
    ("resnet50", 1, 32, 2048), ("dino_resnet50", 2, 16, 2048), ("resnet50", 4, 8, 2048), ("vgg16", 2, 16, 512),
])
def test_cnn_trunks_and_features_follow_networks_py(arch, dilate, stride, channels):
    """ResNet-50 without pool/fc, res5 (and res4) dilated by --resnet_dilate; VGG16 features without
    the last max-pool; the map's rows normalised together by a fresh LayerNorm((N, d))."""
    torch.manual_seed(0)
    model = build_cnn(arch, "random", dilate)
    if arch == "vgg16":
        assert isinstance(model[-1], torch.nn.ReLU) and sum(isinstance(m, torch.nn.MaxPool2d) for m in model) == 4
    images = preprocess_lost(_image(96, 128), 16)[None]
    feats, grid, scales = cnn_features(model, images)
    with torch.no_grad():
        x = model(images)
    assert x.shape[1:] == (channels, 96 // stride, 128 // stride) and grid == (96 // stride, 128 // stride)
    assert scales == (float(stride), float(stride))
    rows = x.reshape(1, channels, -1).transpose(1, 2)
    expected = (rows - rows.mean()) / torch.sqrt(rows.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)


def test_cnn_weights_load_strictly_except_the_classifier(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    torch.save(reference.state_dict(), tmp_path / "rn50.pth")  # torchvision's layout, with fc
    trunk = build_cnn("resnet50", tmp_path / "rn50.pth")
    torch.testing.assert_close(trunk[0].weight, reference.conv1.weight)
    import cad.checkpoint

    no_fc = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    monkeypatch.setattr(cad.checkpoint, "read_weights", lambda path: dict(no_fc))  # DINO's file: no classifier
    torch.testing.assert_close(build_cnn("dino_resnet50", tmp_path / "rn50.pth")[4][0].conv1.weight,
                               reference.layer1[0].conv1.weight)
    monkeypatch.setattr(cad.checkpoint, "read_weights", lambda path: {**no_fc, "head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys \\['head.weight'\\]"):
        build_cnn("dino_resnet50", tmp_path / "rn50.pth")
    monkeypatch.setattr(cad.checkpoint, "read_weights", lambda path: {k: v for k, v in no_fc.items() if k != "bn1.bias"})
    with pytest.raises(CheckpointError, match="missing keys \\['bn1.bias'\\]"):
        build_cnn("dino_resnet50", tmp_path / "rn50.pth")


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory):
    return save_random_checkpoint("dino_vits16", tmp_path_factory.mktemp("w") / "vit.pth", seed=1, **SMALL)


@pytest.mark.parametrize("which, index", [("q", 0), ("k", 1), ("v", 2)])
def test_lost_which_features_and_dino_position_rule(small_vit, which, index):
    """main_lost.py: qkv.reshape(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4)[index], heads concatenated,
    CLS dropped; LOST's DINO resizes the position embedding with the +0.1 rule."""
    method = LOST(SimpleNamespace(models=(("dino_vits16", str(small_vit)),), device="cpu"), features=which, **SMALL)
    assert method.model.interpolate_offset == DINO_INTERPOLATE_OFFSET
    image = _image()
    batch = preprocess_lost(image, 16)[None]
    captured = {}
    hook = method.model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o))
    extract_features(method.model, batch)
    hook.remove()
    tokens = captured["qkv"].shape[1]
    chosen = captured["qkv"].reshape(1, tokens, 3, 2, -1).permute(2, 0, 3, 1, 4)[index]
    feats = chosen.transpose(1, 2).reshape(1, tokens, -1)[0, 1:]
    torch.testing.assert_close(method.grid_features(batch)[0][0], feats)
    ((obj,),) = method.discover([image])
    expected = lost(feats, (5, 7), 16, image.shape[:2])
    np.testing.assert_array_equal(obj.box, expected.box)
    assert obj.seed == expected.seed


def test_dino_seg_keeps_the_top_60_percent_mass_and_the_reference_component_rule():
    # 3x4 grid, one head: the 8 background patches hold 32 % of the mass, under the 40 % left out;
    # kept: patch 0 (component A, label 1) and patches 9-11 (component C, label 2, the larger)
    attn = torch.full((2, 12), 0.05)
    attn[1, [0, 9, 10, 11]] = torch.tensor([0.23, 0.2, 0.21, 0.22])
    # the reference sizes labels 0..max-1 only, so C (the last label) is never chosen: A's box
    np.testing.assert_array_equal(dino_seg(attn, (3, 4), 16, head=1), [0, 0, 16, 16])
    single = torch.full((1, 12), 0.01)
    single[0, [5, 6]] = 0.5  # one component: the reference takes label 0, the background
    np.testing.assert_array_equal(dino_seg(single, (3, 4), 16, head=0), [0, 0, 64, 48])


def test_lost_on_a_cnn_and_option_checks():
    torch.manual_seed(0)
    method = LOST(SimpleNamespace(models=(("vgg16", "random"),), device="cpu"))
    image = _image(90, 100)
    ((obj,),) = method.discover([image])
    feats, grid, scales = cnn_features(method.model, preprocess_lost(image, 16)[None])
    assert scales == (16.0, 16.0)
    np.testing.assert_array_equal(obj.box, lost(feats[0], grid, scales, image.shape[:2]).box)
    with pytest.raises(ValueError, match="transformer"):
        LOST(SimpleNamespace(models=(("dino_resnet50", None),), device="cpu"), dinoseg=True)
    with pytest.raises(ValueError, match="features"):
        LOST(SimpleNamespace(models=(), device="cpu"), features="x")


def test_discover_cli_lost_options_are_checked(tmp_path, capsys):
    from cad.discovery.cli import run

    (tmp_path / "images").mkdir()
    base = ["--images", str(tmp_path / "images"), "--out", str(tmp_path / "o.json")]
    for argv, message in [
        (["maskcut", *base, "--features", "q"], "are LOST options"),
        (["lost", *base, "--arch", "resnet50", "--dinoseg"], "DINO-seg can only be applied to transformer networks"),
        (["lost", *base, "--dinoseg-head", "2"], "--dinoseg-head needs --dinoseg"),
    ]:
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def _voc(root):
    """VOC layout: image 1 has a difficult and a normal dog, image 2 only a truncated cat."""
    voc = root / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets/Main/trainval.txt").write_text("000001\n000002\n")
    objects = {
        "000001": [("dog", 1, 0, (1, 1, 50, 40)), ("dog", 0, 0, (61, 41, 100, 80))],
        "000002": [("cat", 0, 1, (11, 11, 30, 30))],
    }
    for fileid, objs in objects.items():
        xml = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><truncated>{t}</truncated><bndbox><xmin>{a}</xmin>"
            f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>" for n, d, t, (a, b, c, e) in objs
        )
        (voc / f"Annotations/{fileid}.xml").write_text(f"<annotation><size><width>100</width><height>80</height></size>{xml}</annotation>")
    return voc


def test_no_hard_leaves_out_hard_objects_and_images(tmp_path):
    from cad.data.voc import register_class_agnostic_voc

    register_class_agnostic_voc("lost_no_hard_test", _voc(tmp_path), "trainval", 2007, "corloc")
    every = dataset_gt_boxes("lost_no_hard_test")
    assert {k: len(v) for k, v in every.items()} == {"000001": 2, "000002": 1}
    no_hard = dataset_gt_boxes("lost_no_hard_test", no_hard=True)
    assert list(no_hard) == ["000001"]
    np.testing.assert_array_equal(no_hard["000001"], [[60, 40, 100, 80]])


def test_corloc_tool_on_pickles_results_and_coco_files(tmp_path, capsys):
    import importlib.util

    from cad.data.voc import register_class_agnostic_voc
    from conftest import REPO

    register_class_agnostic_voc("lost_corloc_file_test", _voc(tmp_path), "trainval", 2007, "corloc")
    spec = importlib.util.spec_from_file_location("corloc_tool", REPO / "tools" / "corloc.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    # LOST's pickle: image name -> [x0, y0, x1, y1]; image 1 hit (the difficult dog counts), image 2 missed
    (tmp_path / "preds.pkl").write_bytes(pickle.dumps({"000001.jpg": np.array([0, 0, 48, 40]), "000002.jpg": np.array([50, 50, 60, 60])}))
    # detectron2 results with VOC string ids; the top score per image counts
    results = [
        {"image_id": "000001", "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": "000001", "category_id": 1, "bbox": [60, 40, 40, 40], "score": 0.5},
        {"image_id": "000002", "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.7},
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    files = [r["file_name"] for r in DatasetCatalog.get("lost_corloc_file_test")]
    coco = {"images": [{"id": 7, "file_name": files[1]}], "annotations": [{"image_id": 7, "bbox": [10, 10, 20, 20], "score": 1.0}]}
    (tmp_path / "pseudo.json").write_text(json.dumps(coco))
    for pred, extra, expected in [
        ("preds.pkl", [], "corloc: 50.00 (1/2)"),
        ("results.json", [], "corloc: 50.00 (1/2)"),
        ("results.json", ["--no-hard"], "corloc: 0.00 (0/1)"),
        ("pseudo.json", [], "corloc: 50.00 (1/2)"),
    ]:
        assert tool.main(["--pred", str(tmp_path / pred), "--dataset", "lost_corloc_file_test", *extra]) == 0
        assert capsys.readouterr().out.strip() == expected, pred
    (tmp_path / "bad.json").write_text(json.dumps([{**results[0], "image_id": "999999"}]))
    assert tool.main(["--pred", str(tmp_path / "bad.json"), "--dataset", "lost_corloc_file_test"]) == 2
    assert "image id '999999' is not in the split" in capsys.readouterr().err


def test_lost_figures(small_vit, tmp_path, capsys):
    import importlib.util

    import cv2

    from conftest import REPO

    image = _image()
    cv2.imwrite(str(tmp_path / "img.png"), image[:, :, ::-1])
    spec = importlib.util.spec_from_file_location("visualize_lost", REPO / "tools" / "visualize_lost.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from cad.discovery.lost_vis import lost_visualizations

    method = LOST(SimpleNamespace(models=(("dino_vits16", str(small_vit)),), device="cpu"), **SMALL)
    figures = lost_visualizations(method, image, ["fms", "seed_expansion", "pred"])
    ((obj,),) = method.discover([image])
    row, col = divmod(obj.seed, 7)
    assert figures["corr"].shape == (80, 112, 3) and tuple(figures["corr"][row * 16, col * 16]) == (204, 37, 41)
    assert tuple(figures["seed_expansion"][row * 16 + 8, col * 16 + 8]) == (204, 37, 41)
    x0, y0, x1, y1 = (int(v) for v in obj.box)
    assert tuple(figures["pred"][y0 + 1, (x0 + x1) // 2]) == (255, 0, 0)
    assert figures["deg"].shape == (80, 112, 3) and len(np.unique(figures["deg"].reshape(-1, 3), axis=0)) > 1
    assert tool.main([str(tmp_path / "img.png"), "--out", str(tmp_path / "vis"), "--weights", str(tmp_path / "none.pth")]) == 2
    assert "none.pth' (dino_vits16) does not exist" in capsys.readouterr().err
