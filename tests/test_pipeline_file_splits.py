"""Splits named by their files (`coco:JSON:DIR`, `images:DIR`), the prediction-only evaluator and
self-training annotation of an image folder."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from cad.data.file_splits import SplitSpecError, parse_file_split, register_file_split, split_name
from cad.data.self_training import SelfTrainingError, build_self_training_json, folder_images
from cad.discovery.sources import image_size
from cad.engine.cli import run
from cad.engine.setup import ConfigError, register_file_splits
from cad.evaluation.build import build_evaluator
from cad.utils.masks import encode_mask

from conftest import TINY_CONFIG, TINY_OPTS
from pipeline_fakes import make_images

SIZES = [(40, 60), (50, 30)]  # (h, w): non-square, so a width/height swap shows


def _coco(folder, names, sizes, with_ann=True):
    images = [{"id": i + 10, "file_name": n, "height": h, "width": w} for i, (n, (h, w)) in enumerate(zip(names, sizes))]
    anns = []
    if with_ann:
        mask = np.zeros(sizes[0], bool)
        mask[5:15, 10:30] = True
        anns.append({"id": 1, "image_id": 10, "category_id": 7, "bbox": [10.0, 5.0, 20.0, 10.0], "area": 200.0,
                     "iscrowd": 0, "score": 0.25, "segmentation": encode_mask(mask)})
    return {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "x"}]}


@pytest.fixture
def folder(tmp_path):
    names = make_images(tmp_path / "imgs", SIZES)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_coco(tmp_path / "imgs", names, SIZES)))
    return tmp_path, names, path


def test_parse_and_name():
    assert parse_file_split("coco:/a/b.c.json:/x:y") == ("coco", Path("/a/b.c.json"), Path("/x:y"))
    assert parse_file_split("images:rel/dir")[0] == "images"
    for bad in ("coco:a.txt:/d", "coco:a.json", "images:", "coco::d"):
        with pytest.raises(SplitSpecError, match="expected coco:ANNOTATIONS.json:IMAGE_DIR or images:DIR"):
            parse_file_split(bad)
    name = split_name("coco", Path("/data/my pl.json"), Path("/data/im"))
    assert name.startswith("coco_my_pl_") and len(name) == len("coco_my_pl_") + 6
    assert name == split_name("coco", Path("/data/my pl.json"), Path("/data/im"))
    assert name != split_name("coco", Path("/data/my pl.json"), Path("/data/im2"))


def test_coco_split_class_agnostic_with_scores(folder, monkeypatch):
    tmp_path, names, path = folder
    monkeypatch.chdir(tmp_path)  # relative paths name the same split as absolute ones
    name = register_file_split(f"coco:{path}:{tmp_path / 'imgs'}")
    assert register_file_split("coco:ann.json:imgs") == name and "/" not in name and ":" not in name
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == [10, 11]
    assert [(d["height"], d["width"]) for d in dicts] == SIZES
    assert dicts[0]["file_name"] == str(tmp_path / "imgs" / names[0])
    (ann,) = dicts[0]["annotations"]
    assert ann["category_id"] == 0 and ann["score"] == 0.25 and ann["segmentation"]["size"] == [40, 60]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "class_agnostic" and meta.thing_classes == ["object"]


def test_images_split_lists_folder_in_discover_order(tmp_path):
    make_images(tmp_path / "imgs" / "sub", [(20, 30)])
    make_images(tmp_path / "imgs", SIZES)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    name = register_file_split(f"images:{tmp_path / 'imgs'}")
    dicts = DatasetCatalog.get(name)
    assert [(d["image_id"], os.path.relpath(d["file_name"], tmp_path / "imgs")) for d in dicts] == [
        (1, "img_000.png"), (2, "img_001.png"), (3, "sub/img_000.png")]
    assert MetadataCatalog.get(name).evaluator_type == "predictions"


@pytest.mark.parametrize("spec, message", [
    ("coco:{t}/none.json:{t}/imgs", "annotation file '{t}/none.json' not found"),
    ("coco:{t}/ann.json:{t}/none", "image folder '{t}/none' not found"),
    ("images:{t}/none", "image folder '{t}/none' not found"),
    ("coco:{t}/ann.json", "expected coco:ANNOTATIONS.json:IMAGE_DIR"),
])
def test_registration_errors_are_config_errors(folder, spec, message):
    tmp_path = folder[0]
    with pytest.raises(ConfigError) as e:
        register_file_splits([spec.format(t=tmp_path)])
    assert str(e.value).startswith(f"dataset '{spec.format(t=tmp_path)}': ")
    assert message.format(t=tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_images_folder_is_not_a_training_split(tmp_path):
    make_images(tmp_path / "imgs", SIZES)
    with pytest.raises(ConfigError, match="has no annotations to train on: use it as --test-dataset"):
        register_file_splits([f"images:{tmp_path / 'imgs'}"], train=True)
    assert register_file_splits([f"images:{tmp_path / 'imgs'}"])[0].startswith("images_imgs_")


@pytest.mark.parametrize("content, message", [
    ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9}], "is not a COCO annotation JSON (AssertionError"),
    ("{not json", "is not a COCO annotation JSON (JSONDecodeError"),
    ({"annotations": []}, "lists no images"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": []}, "is not a COCO annotation JSON (KeyError: 'height')"),
    (None, "1 of the 2 images listed in"),
])
def test_load_errors_are_one_line(folder, content, message):
    tmp_path, names, path = folder
    if content is None:
        (tmp_path / "imgs" / names[1]).unlink()
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    name = register_file_split(f"coco:{path}:{tmp_path / 'imgs'}")
    with pytest.raises(SplitSpecError, match=re.escape(message)) as e:
        DatasetCatalog.get(name)
    assert "\n" not in str(e.value)


def test_train_net_reports_a_load_error_in_one_line(folder, capsys):
    tmp_path, names, path = folder
    (tmp_path / "imgs" / names[0]).unlink()
    spec = f"coco:{path}:{tmp_path / 'imgs'}"
    status = run(["--config-file", str(TINY_CONFIG), "--train-dataset", spec, *TINY_OPTS,
                  "OUTPUT_DIR", str(tmp_path / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: dataset '{spec}': 1 of the 2 images listed") and names[0] in errors[0]


def test_prediction_writer_writes_results_and_no_metrics(tmp_path):
    make_images(tmp_path / "imgs", SIZES)
    name = register_file_split(f"images:{tmp_path / 'imgs'}")

    class Cfg:  # the keys build_evaluator reads
        class CAD:
            EVAL_DUMP_TRAINING_JSON = ""
            EVAL_EXTRA_TYPES = []

    evaluator = build_evaluator(Cfg, name, str(tmp_path / "out"))
    evaluator.reset()
    inst = Instances((40, 60))
    inst.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 11.0, 22.0]]))
    inst.scores = torch.tensor([0.75])
    inst.pred_classes = torch.tensor([0])
    mask = torch.zeros(1, 40, 60, dtype=torch.bool)
    mask[0, 2:22, 1:11] = True
    inst.pred_masks = mask
    evaluator.process([{"image_id": 2}], [{"instances": inst}])
    assert evaluator.evaluate() == {}
    (r,) = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert r["image_id"] == 2 and r["category_id"] == 1 and r["score"] == 0.75
    assert r["bbox"] == [1.0, 2.0, 10.0, 20.0] and r["segmentation"]["size"] == [40, 60]


def test_image_size_applies_exif_orientation(tmp_path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: Detectron2 reads a 30 x 20 (w x h) file as 20 x 30
    Image.new("RGB", (30, 20)).save(path, exif=exif)
    from detectron2.data.detection_utils import read_image

    assert image_size(str(path)) == read_image(str(path)).shape[:2] == (30, 20)


def test_self_training_json_from_folder(tmp_path):
    names = make_images(tmp_path / "imgs", SIZES)
    mask = np.zeros(SIZES[1], bool)
    mask[10:20, 5:15] = True
    preds = [
        {"image_id": 2, "category_id": 1, "bbox": [5, 10, 10, 10], "score": 0.6, "segmentation": encode_mask(mask)},
        {"image_id": 2, "category_id": 1, "bbox": [5, 10, 10, 10], "score": 0.1, "segmentation": encode_mask(mask)},
    ]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    out = build_self_training_json(tmp_path / "p.json", None, 0.5, image_dir=tmp_path / "imgs")
    assert out["images"] == folder_images(tmp_path / "imgs") == [
        {"id": 1, "file_name": names[0], "width": 60, "height": 40},
        {"id": 2, "file_name": names[1], "width": 30, "height": 50},
    ]
    (ann,) = out["annotations"]
    assert (ann["image_id"], ann["score"], ann["area"], ann["segmentation"]["size"]) == (2, 0.6, 100.0, [50, 30])
    wrong = [dict(preds[0], image_id=1)]  # a 50x30 mask on the 40x60 image: predictions of another folder
    (tmp_path / "w.json").write_text(json.dumps(wrong))
    with pytest.raises(SelfTrainingError, match="disagree"):
        build_self_training_json(tmp_path / "w.json", None, 0.5, image_dir=tmp_path / "imgs")
    with pytest.raises(SelfTrainingError, match="image folder .* not found"):
        build_self_training_json(tmp_path / "p.json", None, 0.5, image_dir=tmp_path / "none")
    with pytest.raises(SelfTrainingError, match="needs their COCO annotation file"):
        build_self_training_json(tmp_path / "p.json", None, 0.5, keep_previous=True, image_dir=tmp_path / "imgs")


def test_missing_files_lists_each_folder_once(tmp_path):
    from cad.data.file_splits import missing_files

    make_images(tmp_path / "a", SIZES)
    paths = [str(tmp_path / "a" / "img_001.png"), str(tmp_path / "a" / "gone.png"), str(tmp_path / "b" / "x.png"),
             str(tmp_path / "a" / "img_000.png")]
    assert missing_files(paths) == [paths[1], paths[2]]
