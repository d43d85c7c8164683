"""CorLoc on hand-made boxes, the registered evaluator, COCO20k and VOC ground truth."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from cad.data.coco20k import load_coco20k, read_coco20k_ids, register_coco20k
from cad.data.paths import DatasetMissingError
from cad.evaluation import build_evaluator
from cad.evaluation.corloc import box_iou, corloc, corloc_hits, dataset_corloc

torch.set_num_threads(1)


def test_corloc_on_hand_made_boxes():
    gt = {
        "a": np.array([[0, 0, 10, 10]]),
        "b": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]),
        "c": np.array([[0, 0, 10, 10]]),
        "d": np.array([[0, 0, 10, 10]]),
        "e": np.zeros((0, 4)),
    }
    pred = {
        "a": np.array([0, 0, 10, 5]),  # IoU exactly 0.5: counts (>=)
        "b": np.array([[21, 21, 30, 30]]),  # IoU 81/100 with the second GT box
        "c": np.array([[0, 0, 10, 4.9]]),  # IoU 0.49: miss
        "e": np.array([[0, 0, 1, 1]]),  # no ground truth: miss
    }  # "d": no prediction: miss
    hits = corloc_hits(pred, gt)
    assert hits == {"a": True, "b": True, "c": False, "d": False, "e": False}
    assert corloc(pred, gt) == pytest.approx(2 / 5)
    # Only the top box counts: the first row without scores, the best-scoring one with scores.
    two = {"a": np.array([[50, 50, 60, 60], [0, 0, 10, 10]])}
    assert corloc(two, {"a": gt["a"]}) == 0.0
    assert corloc(two, {"a": gt["a"]}, {"a": np.array([0.1, 0.9])}) == 1.0
    # Sequences aligned by position work too.
    assert corloc([np.array([0, 0, 10, 10])], [np.array([[1, 1, 10, 10]])]) == 1.0
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [0, 0, 2, 2]]), [[1 / 7, 1.0]])


def _write_coco(root, with_ids=True):
    (root / "coco/annotations").mkdir(parents=True)
    (root / "coco/train2014").mkdir(parents=True)
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 50, "width": 60} for i in (9, 25, 30)]
    anns = [
        {"id": 1, "image_id": 9, "bbox": [10.4, 10.6, 20.0, 20.0], "category_id": 3, "iscrowd": 0, "area": 400},
        {"id": 2, "image_id": 9, "bbox": [0, 0, 60, 50], "category_id": 1, "iscrowd": 1, "area": 3000},
        {"id": 3, "image_id": 25, "bbox": [1, 2, 3, 4], "category_id": 1, "iscrowd": 0, "area": 12},
        {"id": 4, "image_id": 30, "bbox": [5, 5, 5, 5], "category_id": 1, "iscrowd": 0, "area": 25},
    ]
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}
    (root / "coco/annotations/instances_train2014.json").write_text(json.dumps(coco))
    if with_ids:
        (root / "coco/annotations/coco_20k_filenames.txt").write_text(
            "train2014/COCO_train2014_000000000025.jpg\nCOCO_train2014_000000000009.jpg\n\n"
        )


def test_coco20k_loader_and_corloc_follow_lost(tmp_path):
    _write_coco(tmp_path)
    assert read_coco20k_ids(tmp_path / "coco/annotations/coco_20k_filenames.txt") == [25, 9]
    dicts = load_coco20k(tmp_path, "coco20k_test_split")
    assert [d["image_id"] for d in dicts] == [25, 9]  # the list's order; image 30 is not listed
    assert len(dicts[1]["annotations"]) == 2 and dicts[1]["annotations"][1]["iscrowd"] == 1
    register_coco20k(tmp_path, "coco20k_test_split")
    assert MetadataCatalog.get("coco20k_test_split").evaluator_type == "corloc"
    # GT of image 9: crowd box dropped; [10.4, 10.6, 30.4, 30.6] rounded to [10, 11, 30, 31].
    # [10, 11, 30, 21] has IoU 200/400 = 0.5 with the rounded box (a hit) but 196/404 with the
    # unrounded one. Image 25 is a miss.
    preds = {9: np.array([[10, 11, 30, 21]]), 25: np.array([[50, 40, 60, 50]])}
    assert dataset_corloc("coco20k_test_split", preds) == pytest.approx(0.5)


def test_coco20k_missing_id_list_names_the_file(tmp_path):
    _write_coco(tmp_path, with_ids=False)
    with pytest.raises(DatasetMissingError, match="coco_20k_filenames.txt.*COCO20k"):
        load_coco20k(tmp_path, "coco20k_missing")


def _write_voc(root):
    voc = root / "VOC2007"
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets/Main/trainval.txt").write_text("000001\n")
    objects = "".join(
        f"<object><name>dog</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for d, (x0, y0, x1, y1) in [(1, (1, 1, 100, 80))]
    )
    xml = f"<annotation><size><width>100</width><height>80</height></size>{objects}</annotation>"
    (voc / "Annotations/000001.xml").write_text(xml)
    return voc


def test_voc_ground_truth_shift_and_difficult_boxes(tmp_path):
    from cad.data.voc import register_class_agnostic_voc

    register_class_agnostic_voc("voc_corloc_test", _write_voc(tmp_path), "trainval", 2007, "corloc")
    record = DatasetCatalog.get("voc_corloc_test")[0]
    # LOST: 1-based inclusive XML -> [xmin - 1, ymin - 1, xmax, ymax]; "difficult" boxes kept.
    assert record["annotations"][0]["bbox"] == [0.0, 0.0, 100.0, 80.0]
    assert dataset_corloc("voc_corloc_test", {"000001": np.array([[0, 0, 100, 40]])}) == 1.0


def test_registered_evaluator_uses_the_top_scoring_detection(tmp_path):
    from detectron2.config import get_cfg

    from cad.config import add_cad_config

    from cad.data.voc import register_class_agnostic_voc

    register_class_agnostic_voc("voc_corloc_eval_test", _write_voc(tmp_path), "trainval", 2007, "corloc")
    cfg = get_cfg()
    add_cad_config(cfg)
    evaluator = build_evaluator(cfg, "voc_corloc_eval_test", str(tmp_path))
    evaluator.reset()
    instances = Instances((80, 100))
    instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 100.0, 60.0]]))
    instances.scores = torch.tensor([0.3, 0.8])
    evaluator.process([{"image_id": "000001"}], [{"instances": instances}])
    assert evaluator.evaluate() == {"corloc": {"CorLoc": 100.0}}
    instances.scores = torch.tensor([0.9, 0.8])
    evaluator.reset()
    evaluator.process([{"image_id": "000001"}], [{"instances": instances}])
    assert evaluator.evaluate() == {"corloc": {"CorLoc": 0.0}}


def test_builtin_lost_splits_use_corloc():
    import cad  # noqa: F401  (registers the builtin splits)

    for name in ("voc07_trainval", "voc12_trainval", "coco20k_train"):
        assert MetadataCatalog.get(name).evaluator_type == "corloc"
