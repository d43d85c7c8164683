"""tools/demo.py / cad.engine.demo end to end on a generated folder: a detector, Mask2Former,
VoteCut (small random ViTs) and DIOD (frames -> strips); PNGs and the JSON against the model's
direct output on the same test-time mapping."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from cad.backbones.vit import save_random_checkpoint
from cad.data.mapper import CadDatasetMapper
from cad.data.synthetic import SHAPES_SPLITS, render_image
from cad.data.views import Mask2FormerInstanceMapper
from cad.engine.demo import RESULTS_FILE, run_demo
from cad.engine.predict import build_loaded_model
from cad.engine.setup import ConfigError, build_cfg
from cad.engine.trainer import TRAINER_REGISTRY

from conftest import REPO, TINY_CONFIG, run_tool

SIZES = [(96, 128), (128, 80), (112, 112)]
TINY_VIT = ["CAD.DISCOVERY.VIT_DEPTH", "2", "CAD.DISCOVERY.VIT_EMBED_DIM", "48", "CAD.DISCOVERY.VIT_NUM_HEADS", "2"]
COMMON = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 generated shapes images of different sizes, one truncated PNG and a text file named .jpg."""
    d = tmp_path_factory.mktemp("photos")
    for i, (h, w) in enumerate(SIZES):
        image, _ = render_image(SHAPES_SPLITS["synthetic_shapes_tiny_val"], i)
        Image.fromarray(np.ascontiguousarray(image[:h, :w])).save(d / f"img{i}.png")
    (d / "broken.png").write_bytes((d / "img0.png").read_bytes()[:200])
    (d / "notes.jpg").write_text("not an image")
    return d


def _cfg(config, *opts):
    return build_cfg(argparse.Namespace(config_file=str(config), opts=[*COMMON, *map(str, opts)],
                                        train_dataset="", test_dataset=""))


def _save_random(cfg, path):
    torch.manual_seed(0)
    model = TRAINER_REGISTRY.get(cfg.CAD.TRAINER).build_model(cfg)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def _direct(cfg, mapper, folder, threshold):
    """Per image (sorted names, readable only): the model's instances with score >= threshold."""
    model = build_loaded_model(cfg)
    out = []
    for i in range(len(SIZES)):
        f = str(folder / f"img{i}.png")
        h, w = SIZES[i]
        with torch.no_grad():
            inst = model([mapper({"file_name": f, "image_id": i, "height": h, "width": w})])[0]["instances"].to("cpu")
        out.append(inst[inst.scores >= threshold])
    return out


def _written(inst, with_masks):
    """The instances the JSON keeps (pseudo-label format): boxes at least 1 px wide and high, non-empty masks."""
    wh = inst.pred_boxes.tensor[:, 2:] - inst.pred_boxes.tensor[:, :2]
    keep = (wh >= 1).all(dim=1)
    if with_masks:
        keep &= inst.pred_masks.flatten(1).any(dim=1)
    return inst[keep]


def _check(summary, out, direct, with_masks=True):
    assert [s.split("/")[-1] for s in summary.skipped] == ["broken.png", "notes.jpg"]
    assert len(summary.pngs) == len(SIZES)
    for i, (h, w) in enumerate(SIZES):
        png = out / f"img{i}_{i}.png"
        assert png in summary.pngs and Image.open(png).size == (w, h)
    coco = json.loads((out / RESULTS_FILE).read_text())
    assert [(im["id"], im["height"], im["width"]) for im in coco["images"]] == [(i, h, w) for i, (h, w) in enumerate(SIZES)]
    for i, inst in enumerate(direct):
        inst = _written(inst, with_masks)
        anns = [a for a in coco["annotations"] if a["image_id"] == i]
        assert len(anns) == len(inst), i
        scores = sorted(a["score"] for a in anns)
        assert np.allclose(scores, sorted(inst.scores.tolist()), atol=1e-6)
        if with_masks:
            order = torch.argsort(inst.scores, descending=True)
            got = sorted(anns, key=lambda a: -a["score"])
            for a, j in zip(got, order.tolist()):
                assert a["segmentation"]["size"] == [SIZES[i][0], SIZES[i][1]]
                assert np.array_equal(mask_util.decode(a["segmentation"]).astype(bool), inst.pred_masks[j].numpy())
    return coco


def test_detector_demo(folder, tmp_path):
    cfg0 = _cfg(TINY_CONFIG)
    cfg = _cfg(TINY_CONFIG, "MODEL.WEIGHTS", _save_random(cfg0, tmp_path / "det.pth"))
    out = tmp_path / "out"
    every = _direct(cfg, CadDatasetMapper(cfg, is_train=False), folder, 0.0)
    threshold = float(torch.cat([inst.scores for inst in every]).median())
    summary = run_demo(cfg, [str(folder)], str(out), threshold=threshold)
    coco = _check(summary, out, [inst[inst.scores >= threshold] for inst in every])
    assert 0 < len(coco["annotations"]) < sum(len(inst) for inst in every)  # the threshold removed some


def test_mask2former_demo(folder, tmp_path):
    config = REPO / "configs" / "GuidedDistillation" / "mask2former_tiny_synthetic_teacher.yaml"
    cfg = _cfg(config, "MODEL.WEIGHTS", _save_random(_cfg(config), tmp_path / "m2f.pth"))
    out = tmp_path / "out"
    summary = run_demo(cfg, [str(folder / "*.png"), str(folder / "notes.jpg")], str(out), threshold=0.0)
    _check(summary, out, _direct(cfg, Mask2FormerInstanceMapper(cfg, False), folder, 0.0))


def test_votecut_demo(folder, tmp_path):
    a = save_random_checkpoint("dino_vits16", tmp_path / "a.pth", seed=1, depth=2, embed_dim=48, num_heads=2)
    b = save_random_checkpoint("dino_vits8", tmp_path / "b.pth", seed=2, depth=2, embed_dim=48, num_heads=2)
    cfg = _cfg(REPO / "configs" / "CuVLER" / "votecut_synthetic.yaml", "CAD.DISCOVERY.WEIGHTS", f"['{a}', '{b}']",
               "CAD.DISCOVERY.RESOLUTION", "128", *TINY_VIT)
    out = tmp_path / "out"
    summary = run_demo(cfg, [str(folder)], str(out), threshold=0.0)
    coco = _check(summary, out, _direct(cfg, CadDatasetMapper(cfg, is_train=False), folder, 0.0))
    assert coco["annotations"]


def test_diod_demo_writes_strips(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for t in range(7):
        Image.fromarray(rng.integers(0, 255, (72, 144, 3), dtype=np.uint8)).save(frames / f"{t:04d}.png")
    config = REPO / "configs" / "DIOD" / "diod_synthetic.yaml"
    weights = _save_random(_cfg(config), tmp_path / "diod.pth")
    proc = run_tool("demo.py", "--config-file", str(config), "--input", str(frames), "--output", str(tmp_path / "out"),
                    *COMMON, "MODEL.WEIGHTS", weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    strips = sorted((tmp_path / "out").glob("*.png"))
    assert len(strips) == 1  # 7 frames: one clip of 5, the last 2 left out
    assert Image.open(strips[0]).size == (2 * 5 * 128, 2 * 2 * 64)  # x2: frames row + slot row
    assert "0 unreadable inputs skipped" in proc.stdout and "do not fill a clip" in proc.stderr


def test_demo_errors(folder, tmp_path):
    cfg = _cfg(TINY_CONFIG)
    with pytest.raises(ConfigError, match="--input '.*nothing\\*.png' matches no file"):
        run_demo(cfg, [str(folder / "nothing*.png")], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="no readable image in --input \\(2 unreadable\\)"):
        run_demo(cfg, [str(folder / "broken.png"), str(folder / "notes.jpg")], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="no weights to evaluate GeneralizedRCNN"):
        run_demo(cfg, [str(folder)], str(tmp_path / "o"))
