"""eval_pseudo_masks: class-agnostic AP/AR on hand-made ground truth and predictions."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cad.utils.masks import encode_mask
from cad.evaluation.pseudo_masks import evaluate_pseudo_masks

ROOT = Path(__file__).resolve().parents[1]


def _mask(h, w, box):
    m = np.zeros((h, w), bool)
    x, y, bw, bh = box
    m[y : y + bh, x : x + bw] = True
    return m


def _gt():
    """Two 100x80 images; GT categories 3 and 7 (both become "object")."""
    images = [{"id": 10, "file_name": "a/x.jpg", "width": 100, "height": 80},
              {"id": 20, "file_name": "a/y.jpg", "width": 100, "height": 80}]
    boxes = [(10, 10, 40, 30, 10, 3), (60, 20, 30, 50, 10, 7), (5, 5, 50, 50, 20, 3)]
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": [x, y, w, h], "iscrowd": 0,
             "segmentation": encode_mask(_mask(80, 100, (x, y, w, h))), "area": w * h}
            for i, (x, y, w, h, im, c) in enumerate(boxes)]
    return {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}


def _pred_from(gt, shift=0, image_ids=None):
    """Predictions = GT boxes/masks shifted right by `shift` pixels, as a pipeline COCO JSON."""
    ids = image_ids or {10: 1, 20: 2}
    images = [{**im, "id": ids[im["id"]], "file_name": im["file_name"].split("/")[-1]} for im in gt["images"]]
    anns = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        anns.append({"id": a["id"], "image_id": ids[a["image_id"]], "category_id": 1, "bbox": [x + shift, y, w, h],
                     "score": 0.9, "segmentation": encode_mask(_mask(80, 100, (x + shift, y, w, h)))})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_perfect_predictions_give_100(iou_type):
    # pred image ids (1, 2) differ from GT's (10, 20): they are matched by file name
    m = evaluate_pseudo_masks(_gt(), _pred_from(_gt()), iou_type)
    assert m["AP"] == pytest.approx(100) and m["AP50"] == pytest.approx(100) and m["AP75"] == pytest.approx(100)
    assert m["AR@1"] == pytest.approx(100 * 2 / 3)  # image 10 has 2 objects: 1 detection recalls half of them
    assert m["AR@10"] == pytest.approx(100) and m["AR@100"] == pytest.approx(100)
    assert math.isnan(m["APs"])  # no small GT objects


def test_misses_and_no_predictions_give_0():
    far = _pred_from(_gt(), shift=200)  # boxes entirely outside the objects
    assert evaluate_pseudo_masks(_gt(), far, "bbox")["AP"] == 0
    empty = {**far, "annotations": []}
    assert evaluate_pseudo_masks(_gt(), empty, "segm") == {k: 0.0 for k in evaluate_pseudo_masks(_gt(), empty, "segm")}


def test_partial_iou_hits_ap50_not_ap75():
    # a 40-wide box shifted by 10 px: IoU 30/50 = 0.6; 30-wide by 10: IoU 20/40 = 0.5 (a hit at .5);
    # 50-wide by 10: IoU 40/60 = 0.67 -> every prediction matches at IoU .5, none at .75
    m = evaluate_pseudo_masks(_gt(), _pred_from(_gt(), shift=10), "bbox")
    assert m["AP50"] == pytest.approx(100) and m["AP75"] == pytest.approx(0)


def test_bad_inputs():
    pred = _pred_from(_gt())
    with pytest.raises(ValueError, match="not \\(uniquely\\) in the ground truth"):
        evaluate_pseudo_masks(_gt(), {**pred, "images": [{**pred["images"][0], "file_name": "zz.jpg"}]})
    boxes = {**pred, "annotations": [{k: v for k, v in a.items() if k != "segmentation"} for a in pred["annotations"]]}
    with pytest.raises(ValueError, match="iou_type 'bbox'"):
        evaluate_pseudo_masks(_gt(), boxes, "segm")


def _tool_main():
    """`main` of tools/eval_pseudo_masks.py, imported in this process (no second interpreter start)."""
    spec = importlib.util.spec_from_file_location("eval_pseudo_masks_tool", ROOT / "tools/eval_pseudo_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_tool_prints_and_writes_json(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(_gt()))
    (tmp_path / "pred.json").write_text(json.dumps(_pred_from(_gt())))
    main = _tool_main()
    argv = ["--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json"), "--out", str(tmp_path / "m.json")]
    assert main(argv) == 0
    assert "AP=100.00" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["AP75"] == pytest.approx(100)
    assert main(argv[:3] + [str(tmp_path / "missing.json")] + argv[4:]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json" in err


def test_tool_input_that_is_not_coco_is_one_line(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(_gt()))
    (tmp_path / "text.json").write_text("hello")
    (tmp_path / "empty.json").write_text("{}")
    main = _tool_main()
    cases = [
        ("text.json", "gt.json", f"error: --gt '{tmp_path / 'text.json'}' is not JSON (Expecting value at line 1, column 1)"),
        ("empty.json", "gt.json", f"error: --gt '{tmp_path / 'empty.json'}' is not a COCO annotation file (needs 'images' and 'annotations')"),
        ("gt.json", "empty.json", f"error: --pred '{tmp_path / 'empty.json'}' is neither a COCO file with 'annotations' nor a COCO results list"),
    ]
    for gt, pred, message in cases:
        assert main(["--gt", str(tmp_path / gt), "--pred", str(tmp_path / pred), "--out", str(tmp_path / "m.json")]) == 2
        assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "m.json").exists()

