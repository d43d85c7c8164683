"""Datasets: synthetic generator, lazy registration, clear errors, VOC/COCO class-agnostic loaders, mapper."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

import cad  # noqa: F401
from cad.config import add_cad_config
from cad.data.coco import register_class_agnostic_coco
from cad.data.mapper import CadDatasetMapper, CorruptImageError
from cad.data.paths import DatasetMissingError
from cad.data.synthetic import SHAPES_SPLITS, generate_shapes, render_image
from cad.data.voc import register_class_agnostic_voc


def test_render_is_deterministic_and_masks_are_disjoint():
    split = SHAPES_SPLITS["synthetic_shapes_tiny_train"]
    image_a, masks_a = render_image(split, 3)
    image_b, masks_b = render_image(split, 3)
    assert np.array_equal(image_a, image_b) and len(masks_a) == len(masks_b) >= 1
    stacked = np.stack([m for m, _ in masks_a])
    assert stacked.sum(0).max() == 1, "visible masks must not overlap"
    assert all(m.sum() >= split.min_visible_area for m, _ in masks_a)
    assert not np.array_equal(image_a, render_image(split, 4)[0])


def test_generated_json_matches_rendering(tmp_path):
    json_path = generate_shapes("synthetic_shapes_tiny_val", tmp_path)
    data = json.loads(json_path.read_text())
    split = SHAPES_SPLITS["synthetic_shapes_tiny_val"]
    assert len(data["images"]) == split.num_images
    first = [a for a in data["annotations"] if a["image_id"] == 1]
    _, masks = render_image(split, 0)
    assert len(first) == len(masks)
    for ann, (mask, kind) in zip(first, masks):
        decoded = mask_util.decode(ann["segmentation"]).astype(bool)
        assert np.array_equal(decoded, mask) and ann["category_id"] == kind
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    mtime = json_path.stat().st_mtime_ns
    generate_shapes("synthetic_shapes_tiny_val", tmp_path)  # complete: not rewritten
    assert json_path.stat().st_mtime_ns == mtime


def test_registration_touches_no_disk(tmp_path):
    # Importing cad registers every predefined split under a root that does not exist.
    missing_root = tmp_path / "nowhere"
    code = "import cad; from detectron2.data import DatasetCatalog; print(len(DatasetCatalog.list()))"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DETECTRON2_DATASETS": str(missing_root)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip().splitlines()[-1]) > 30
    assert not missing_root.exists()


def test_missing_dataset_error_names_path_and_readme(tmp_path):
    name = "test_missing_coco_split"
    register_class_agnostic_coco(name, tmp_path / "ann.json", tmp_path / "images", "COCO")
    with pytest.raises(DatasetMissingError) as err:
        DatasetCatalog.get(name)
    message = str(err.value)
    assert str(tmp_path / "images") in message and "DETECTRON2_DATASETS" in message and "datasets/README.md" in message


def test_class_agnostic_coco_maps_every_category_and_keeps_score(tmp_path):
    (tmp_path / "images").mkdir()
    ann = {
        "images": [{"id": 7, "file_name": "a.png", "width": 10, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0, "score": 0.25},
            {"id": 2, "image_id": 7, "category_id": 9, "bbox": [5, 5, 4, 4], "area": 16, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    register_class_agnostic_coco("test_cls_agnostic_json", tmp_path / "ann.json", tmp_path / "images", "COCO")
    (record,) = DatasetCatalog.get("test_cls_agnostic_json")
    assert [a["category_id"] for a in record["annotations"]] == [0, 0]
    assert record["annotations"][0]["score"] == 0.25 and "score" not in record["annotations"][1]
    assert MetadataCatalog.get("test_cls_agnostic_json").thing_classes == ["object"]


def test_evaluator_reconverts_a_deleted_coco_cache(tmp_path):
    """Detectron2 remembers the COCO-format cache path per process; a deleted cache is rebuilt."""
    from cad.evaluation import build_evaluator

    (tmp_path / "images").mkdir()
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0}],
        "categories": [{"id": 3, "name": "cat"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    register_class_agnostic_coco("test_deleted_gt_cache", tmp_path / "ann.json", tmp_path / "images", "COCO")
    cfg = get_cfg()
    add_cad_config(cfg)
    first, second = tmp_path / "eval1", tmp_path / "eval2"
    build_evaluator(cfg, "test_deleted_gt_cache", str(first))
    metadata = MetadataCatalog.get("test_deleted_gt_cache")
    assert metadata.json_file == str(first / "test_deleted_gt_cache_coco_format.json")
    build_evaluator(cfg, "test_deleted_gt_cache", str(second))  # cache still there: reused
    assert metadata.json_file == str(first / "test_deleted_gt_cache_coco_format.json")
    (first / "test_deleted_gt_cache_coco_format.json").unlink()
    evaluator = build_evaluator(cfg, "test_deleted_gt_cache", str(second))
    assert metadata.json_file == str(second / "test_deleted_gt_cache_coco_format.json")
    assert evaluator._coco_api.getAnnIds() == [1]


def _write_voc(root: Path) -> None:
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    objects = "".join(
        f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for c, b in [("dog", (1, 1, 50, 40)), ("forklift", (10, 20, 30, 60))]  # forklift: not a VOC class
    )
    (root / "Annotations" / "000001.xml").write_text(
        f"<annotation><size><width>64</width><height>64</height></size>{objects}</annotation>"
    )


def test_voc_loader_is_class_agnostic_with_pixel_shift(tmp_path):
    """A VOC-format folder whose XML names a class outside VOC's 20 loads, every box class 0."""
    _write_voc(tmp_path / "VOC2007")
    register_class_agnostic_voc("test_voc_split", tmp_path / "VOC2007", "trainval", 2007, "class_agnostic")
    (record,) = DatasetCatalog.get("test_voc_split")
    boxes = [a["bbox"] for a in record["annotations"]]
    assert boxes == [[0.0, 0.0, 50.0, 40.0], [9.0, 19.0, 30.0, 60.0]]  # xmin/ymin shifted by -1
    assert {a["category_id"] for a in record["annotations"]} == {0}


def _mapper_cfg():
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


def _record(tmp_path, image_bytes=None):
    from PIL import Image

    path = tmp_path / "img.png"
    if image_bytes is None:
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    else:
        path.write_bytes(image_bytes)

    def ann(x, score=None):
        mask = np.zeros((64, 64), np.uint8)
        mask[x : x + 10, x : x + 10] = 1
        rle = mask_util.encode(np.asfortranarray(mask))
        out = {"bbox": [x, x, 10, 10], "bbox_mode": 1, "category_id": 0, "segmentation": rle, "iscrowd": 0}
        if score is not None:
            out["score"] = score
        return out

    empty = {"bbox": [30, 30, 0, 0], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
             "segmentation": mask_util.encode(np.asfortranarray(np.zeros((64, 64), np.uint8)))}
    return {"file_name": str(path), "height": 64, "width": 64, "image_id": 1,
            "annotations": [ann(2, 0.5), dict(empty, score=0.9), ann(40)]}


def test_mapper_keeps_scores_aligned_after_filtering(tmp_path):
    out = CadDatasetMapper(_mapper_cfg(), is_train=True)(_record(tmp_path))
    inst = out["instances"]
    assert len(inst) == 2  # the empty box is filtered out together with its score
    assert torch.allclose(inst.gt_scores, torch.tensor([0.5, 1.0]))


def test_mapper_corrupt_image_skipped_in_training_error_in_inference(tmp_path):
    record = _record(tmp_path, image_bytes=b"not a png")
    before = CadDatasetMapper.num_skipped
    assert CadDatasetMapper(_mapper_cfg(), is_train=True)(dict(record)) is None
    assert CadDatasetMapper.num_skipped == before + 1
    with pytest.raises(CorruptImageError, match="img.png"):
        CadDatasetMapper(_mapper_cfg(), is_train=False)(dict(record))
