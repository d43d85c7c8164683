"""tools/demo.py / cad.engine.demo end to end on a generated folder: a detector, Mask2Former,
VoteCut (small random ViTs) and DIOD (frames -> strips); PNGs and the JSON against the model's
direct output on the same test-time mapping; a folder is listed as images:DIR lists it, camera-style
file names are inputs, overrides go after --opts, tools/self_training_ann.py reads the JSON."""
import argparse
import importlib.util
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_util

from cad.backbones.vit import save_random_checkpoint
from cad.data.self_training import folder_images, register_self_training_split
from cad.data.mapper import CadDatasetMapper
from cad.data.synthetic import SHAPES_SPLITS, render_image
from cad.data.views import Mask2FormerInstanceMapper
from cad.engine.demo import RESULTS_FILE, collect_images, run_demo
from cad.engine.predict import build_loaded_model
from cad.engine.setup import ConfigError, build_cfg
from cad.engine.trainer import TRAINER_REGISTRY

from conftest import REPO, TINY_CONFIG, run_tool

SIZES = [(96, 128), (128, 80), (112, 112)]
TINY_VIT = ["CAD.DISCOVERY.VIT_DEPTH", "2", "CAD.DISCOVERY.VIT_EMBED_DIM", "48", "CAD.DISCOVERY.VIT_NUM_HEADS", "2"]
COMMON = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1"]
# The fixture folder sorted by name: broken.png (id 1), img0..2.png (ids 2..4), notes.jpg (id 5).
FIRST_ID = 2


def _tool(name):
    """tools/<name>.py as a module (its main(argv) runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        png = out / f"img{i}_{FIRST_ID + i}.png"
        assert png in summary.pngs and Image.open(png).size == (w, h)
    coco = json.loads((out / RESULTS_FILE).read_text())
    assert [(im["id"], im["height"], im["width"]) for im in coco["images"]] == [
        (FIRST_ID + i, h, w) for i, (h, w) in enumerate(SIZES)]
    for i, inst in enumerate(direct):
        inst = _written(inst, with_masks)
        anns = [a for a in coco["annotations"] if a["image_id"] == FIRST_ID + i]
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
    """Each folder of frames is one video: 7 frames in a/ give one clip of 5 (2 left out), 5 in b/ one."""
    frames = tmp_path / "frames"
    rng = np.random.default_rng(0)
    for video, count in (("a", 7), ("b", 5)):
        (frames / video).mkdir(parents=True)
        for t in range(count):
            Image.fromarray(rng.integers(0, 255, (72, 144, 3), dtype=np.uint8)).save(frames / video / f"{t:04d}.png")
    config = REPO / "configs" / "DIOD" / "diod_synthetic.yaml"
    weights = _save_random(_cfg(config), tmp_path / "diod.pth")
    proc = run_tool("demo.py", "--config-file", str(config), "--input", str(frames), "--output", str(tmp_path / "out"),
                    "--opts", *COMMON, "MODEL.WEIGHTS", weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    strips = sorted((tmp_path / "out").glob("*.png"))
    assert len(strips) == 2
    assert Image.open(strips[0]).size == (2 * 5 * 128, 2 * 2 * 64)  # x2: frames row + slot row
    assert "0 unreadable inputs skipped" in proc.stdout
    assert "The last 2 frames of " + str(frames / "a") + " do not fill a clip" in proc.stderr


@pytest.fixture(scope="module")
def camera_folder(tmp_path_factory):
    """Camera-style names, one in a subfolder: the demo must read all of them, as images:DIR does."""
    d = tmp_path_factory.mktemp("camera")
    (d / "DCIM").mkdir()
    for i, name in enumerate(["IMG_0001.JPG", "DCIM/DSC01234.JPG", "P1000.jpeg"]):
        image, _ = render_image(SHAPES_SPLITS["synthetic_shapes_tiny_val"], i)
        Image.fromarray(np.ascontiguousarray(image[:64, :96])).save(d / name, format="JPEG")
    return d


def test_demo_cli_camera_names_folder_and_self_training(camera_folder, tmp_path, monkeypatch):
    """tools/demo.py on a folder writes the images entries tools/discover.py / images:DIR give it
    (recursive, sorted, ids 1..N); camera-style names are inputs (--opts carries the overrides);
    tools/self_training_ann.py turns the demo's JSON into a trainable split."""
    weights = _save_random(_cfg(TINY_CONFIG), tmp_path / "det.pth")
    demo = _tool("demo")
    opts = ["--confidence-threshold", "0", "--opts", *COMMON, "MODEL.WEIGHTS", weights]
    out = tmp_path / "folder_out"
    assert demo.main(["--config-file", str(TINY_CONFIG), "--input", str(camera_folder), "--output", str(out), *opts]) == 0
    coco = json.loads((out / RESULTS_FILE).read_text())
    assert coco["images"] == folder_images(camera_folder)
    assert [im["file_name"] for im in coco["images"]] == ["DCIM/DSC01234.JPG", "IMG_0001.JPG", "P1000.jpeg"]
    assert sorted(p.name for p in out.glob("*.png")) == ["DSC01234_1.png", "IMG_0001_2.png", "P1000_3.png"]
    assert coco["annotations"]

    monkeypatch.chdir(camera_folder)
    named = tmp_path / "named_out"
    assert demo.main(["--config-file", str(TINY_CONFIG), "--input", "IMG_0001.JPG", "DCIM/DSC01234.JPG",
                      "--output", str(named), *opts]) == 0
    images = json.loads((named / RESULTS_FILE).read_text())["images"]
    assert [(im["id"], im["file_name"]) for im in images] == [(1, "IMG_0001.JPG"), (2, "DCIM/DSC01234.JPG")]

    prefix = tmp_path / "self"
    assert _tool("self_training_ann").main(["--detectron2-out-dir", str(out), "--save-path-prefix", str(prefix),
                                            "--threshold", "0"]) == 0
    trained = json.loads((tmp_path / "self_thresh0.json").read_text())
    assert trained["images"] == coco["images"]
    assert [(a["image_id"], a["score"]) for a in trained["annotations"]] == [
        (a["image_id"], a["score"]) for a in coco["annotations"]]
    register_self_training_split("demo_self_training", tmp_path / "self_thresh0.json", camera_folder)
    try:
        dicts = DatasetCatalog.get("demo_self_training")
    finally:
        DatasetCatalog.remove("demo_self_training")
        MetadataCatalog.remove("demo_self_training")
    assert [d["file_name"] for d in dicts] == [str(camera_folder / im["file_name"]) for im in coco["images"]]
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"])


def test_demo_cli_overrides_need_opts(folder, capsys):
    """KEY VALUE after the inputs or at the end: one line naming --opts (only for a config key)."""
    demo = _tool("demo")
    base = ["--config-file", str(TINY_CONFIG), "--output", "unused"]
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", str(TINY_CONFIG), "--input", str(folder), "--output", "unused", "MODEL.WEIGHTS", "w.pth"])
    assert e.value.code == 2
    assert ("unrecognized arguments: MODEL.WEIGHTS w.pth; config overrides go after --opts (--opts MODEL.WEIGHTS VALUE ...)"
            in capsys.readouterr().err)
    assert demo.main(["--config-file", str(TINY_CONFIG), "--input", str(folder / "img0.png"), "MODEL.WEIGHTS", "w.pth",
                      "--output", "unused"]) == 2
    assert capsys.readouterr().err == ("error: --input 'MODEL.WEIGHTS' matches no file and is a config key: "
                                       "config overrides go after --opts (--opts MODEL.WEIGHTS VALUE ...)\n")
    assert demo.main([*base, "--input", str(folder / "img0.png"), "IMG_9999.JPG"]) == 2
    assert capsys.readouterr().err == "error: --input 'IMG_9999.JPG' matches no file\n"


def test_collect_images_numbers_from_one(folder):
    records = collect_images([str(folder / "img1.png"), str(folder / "img*.png")])
    assert [(r.image_id, r.path) for r in records] == [
        (1, str(folder / "img1.png")), (2, str(folder / "img0.png")), (3, str(folder / "img2.png"))]


def test_demo_errors(folder, tmp_path):
    cfg = _cfg(TINY_CONFIG)
    with pytest.raises(ConfigError, match="--input '.*nothing\\*.png' matches no file"):
        run_demo(cfg, [str(folder / "nothing*.png")], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="no readable image in --input \\(2 unreadable\\)"):
        run_demo(cfg, [str(folder / "broken.png"), str(folder / "notes.jpg")], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="no weights to evaluate GeneralizedRCNN"):
        run_demo(cfg, [str(folder)], str(tmp_path / "o"))
