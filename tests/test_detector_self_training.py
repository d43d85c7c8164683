"""Self-training JSON: predictions -> pseudo-labels -> registered split (round trip)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog

from cad.data.self_training import (
    SelfTrainingError,
    build_self_training_json,
    register_self_training_split,
    write_self_training_json,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 20, 30  # non-square: a width/height swap would show


def _rle(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _pred(image_id, score, box, rle):
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": score, "segmentation": rle}


@pytest.fixture
def files(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": W, "height": H}, {"id": 2, "file_name": "b.png", "width": W, "height": H}]
    old = [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0,
            "segmentation": _rle(0, 10, 0, 10)},  # IoU 1 with a kept prediction: replaced
           {"id": 8, "image_id": 1, "category_id": 3, "bbox": [20, 12, 10, 8], "area": 80, "iscrowd": 0,
            "segmentation": [[20, 12, 30, 12, 30, 20, 20, 20]]}]  # no overlap (polygon): survives
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": old, "categories": [{"id": 3, "name": "x"}],
                               "licenses": [{"id": 1}]}))
    preds = [
        _pred(1, 0.9, [0, 0, 10, 10], _rle(0, 10, 0, 10)),
        _pred(1, 0.25, [12, 2, 8, 5], _rle(2, 7, 12, 20)),
        _pred(1, 0.1, [0, 0, 5, 5], _rle(0, 5, 0, 5)),        # below threshold
        _pred(2, 0.8, [3, 3, 0.5, 6], _rle(3, 9, 3, 4)),      # degenerate box (w < 1)
        _pred(2, 0.7, [5, 5, 4, 4], _rle(0, 0, 0, 0)),        # empty mask
        _pred(9, 0.9, [0, 0, 4, 4], _rle(0, 4, 0, 4)),        # unknown image
    ]
    out_dir = tmp_path / "eval" / "inference" / "split"
    out_dir.mkdir(parents=True)
    (out_dir / "coco_instances_results.json").write_text(json.dumps(preds))
    return tmp_path, ann


def test_tool_writes_json_that_registers_and_loads(files):
    tmp, ann = files
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "tools/self_training_ann.py"), "--detectron2-out-dir", str(tmp / "eval"),
           "--coco-ann-path", str(ann), "--save-path-prefix", str(tmp / "st"), "--threshold", "0.2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = tmp / "st_thresh0.2.json"
    assert proc.stdout.strip() == str(out)
    data = json.loads(out.read_text())
    assert data["categories"] == [{"id": 1, "name": "object"}] and data["licenses"] == [{"id": 1}]
    assert [(a["id"], a["image_id"], a["score"]) for a in data["annotations"]] == [(1, 1, 0.9), (2, 1, 0.25)]
    assert data["annotations"][1]["area"] == 40.0  # mask area (5 x 8), not the box's
    assert all(a["segmentation"]["size"] == [H, W] for a in data["annotations"])

    (tmp / "images").mkdir()
    register_self_training_split("test_self_training_split", out, tmp / "images")
    dicts = DatasetCatalog.get("test_self_training_split")
    assert [(d["height"], d["width"]) for d in dicts] == [(H, W), (H, W)]
    anns = dicts[0]["annotations"]
    assert [a["score"] for a in anns] == [0.9, 0.25] and {a["category_id"] for a in anns} == {0}
    assert mask_util.decode(anns[1]["segmentation"])[2:7, 12:20].all()
    assert dicts[1]["annotations"] == []

    with pytest.raises(SelfTrainingError, match="missing.json"):
        write_self_training_json(tmp / "eval", tmp / "missing.json", str(tmp / "x"), 0.2)
    with pytest.raises(SelfTrainingError, match="no coco_instances_results.json"):
        write_self_training_json(tmp / "images", ann, str(tmp / "x"), 0.2)
    with pytest.raises(SelfTrainingError, match=r"^--threshold 2.0: a score threshold lies in \[0, 1\]$"):
        write_self_training_json(tmp / "eval", ann, str(tmp / "x"), 2.0)
    (tmp / "text.json").write_text("hello")
    with pytest.raises(SelfTrainingError, match=r"^--coco-ann-path '.*text.json' is not JSON \(Expecting value at line 1, column 1\)$"):
        write_self_training_json(tmp / "eval", tmp / "text.json", str(tmp / "x"), 0.2)
    assert not list(tmp.glob("x*"))  # nothing written


def test_keep_previous_merges_cutler_style(files):
    tmp, ann = files
    data = build_self_training_json(tmp / "eval/inference/split/coco_instances_results.json", ann, 0.2, keep_previous=True)
    anns = data["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3]
    assert anns[2]["image_id"] == 1 and anns[2]["bbox"] == [20, 12, 10, 8] and anns[2]["category_id"] == 1
    assert mask_util.area(anns[2]["segmentation"]) == 80


def test_size_mismatch_is_an_error(files):
    tmp, ann = files
    coco = json.loads(ann.read_text())
    for im in coco["images"]:
        im["width"], im["height"] = H, W  # swapped sizes
    ann.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="disagree"):
        build_self_training_json(tmp / "eval/inference/split/coco_instances_results.json", ann, 0.2)
