"""Your own images, end to end on CPU (docs/own_images.md): an unlabeled folder -> VoteCut
pseudo-masks (small random-init ViTs) -> detector (2 processes) -> predictions on the folder ->
self-training JSON -> self-trained detector evaluated on the folder's ground truth, checking
every hand-off: image ids, sizes, scores, RLE masks and split registration in every process."""
import json
from pathlib import Path

import numpy as np
import pytest

from cad.data.file_splits import split_name
from cad.data.synthetic import ShapesSplit, render_image
from cad.engine.cli import run
from cad.utils.io import atomic_write_json, atomic_write_png
from cad.utils.masks import decode_mask, encode_mask

from conftest import REPO, run_tool

CONFIGS = REPO / "configs" / "CuVLER"
# (h, w) crops of 128x128 generated images: non-square, so a width/height swap cannot pass.
SIZES = [(96, 128), (128, 96), (112, 128), (128, 112)]
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
         "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1",
         "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100"]


def _make_folder(folder: Path, gt_path: Path) -> None:
    """Generated shapes cropped to `SIZES`, as photo_<i>.png, and their ground truth (ids 1..N)."""
    split = ShapesSplit("own", num_images=len(SIZES), seed=7, size=128)
    images, annotations = [], []
    for i, (h, w) in enumerate(SIZES):
        image, masks = render_image(split, i)
        atomic_write_png(folder / f"photo_{i}.png", image[:h, :w])
        images.append({"id": i + 1, "file_name": f"photo_{i}.png", "height": h, "width": w})
        for mask, _ in masks:
            m = mask[:h, :w]
            if m.sum() >= split.min_visible_area:
                ys, xs = np.nonzero(m)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                                    "segmentation": encode_mask(m), "area": float(m.sum()),
                                    "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]})
    atomic_write_json(gt_path, {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]})


def _check_masks(annotations, sizes, pseudo_labels=True):
    """Every RLE is at its image's original (h, w); pseudo-labels are non-empty, with the mask's area
    (a raw prediction's mask may be empty: no pixel above 0.5)."""
    for a in annotations:
        mask = decode_mask(a["segmentation"])
        assert mask.shape == sizes[a["image_id"]]
        if pseudo_labels:
            assert mask.any() and a["area"] == mask.sum()


def _results(out_dir: Path, spec: str) -> list:
    name = split_name(*[Path(p) if p else None for p in _spec_paths(spec)])
    return json.loads((out_dir / "inference" / name / "coco_instances_results.json").read_text())


def _spec_paths(spec: str):
    kind, _, rest = spec.partition(":")
    if kind == "images":
        return kind, None, rest
    json_file, _, root = rest.partition(".json:")
    return kind, json_file + ".json", root


def test_own_images_chain(tmp_path):
    folder, gt = tmp_path / "photos", tmp_path / "gt.json"
    _make_folder(folder, gt)
    sizes = {i + 1: hw for i, hw in enumerate(SIZES)}
    names = {i + 1: f"photo_{i}.png" for i in range(len(SIZES))}
    images_spec, gt_spec = f"images:{folder}", f"coco:{gt}:{folder}"

    # 1. VoteCut (two random-init ViTs, 2 blocks) on the folder: pseudo-labels and prediction-only results.
    pl = tmp_path / "votecut.json"
    assert run(["--config-file", str(CONFIGS / "votecut_synthetic.yaml"), "--eval-only", "--test-dataset", images_spec,
                "CAD.DISCOVERY.RESOLUTION", "128", "CAD.EVAL_DUMP_TRAINING_JSON", str(pl),
                "OUTPUT_DIR", str(tmp_path / "votecut")]) == 0
    votecut = json.loads(pl.read_text())
    assert {im["id"]: (im["file_name"], (im["height"], im["width"])) for im in votecut["images"]} == {
        i: (names[i], sizes[i]) for i in sizes}
    assert len(votecut["annotations"]) >= len(SIZES)
    _check_masks(votecut["annotations"], sizes)
    for i in {a["image_id"] for a in votecut["annotations"]}:  # score = cluster size / largest cluster
        assert max(a["score"] for a in votecut["annotations"] if a["image_id"] == i) == 1.0
    raw = _results(tmp_path / "votecut", images_spec)
    assert sorted((r["image_id"], r["score"]) for r in raw) == sorted((a["image_id"], a["score"]) for a in votecut["annotations"])

    # 2. Zero-shot detector on the pseudo-labels, in 2 processes (gloo): each registers the split itself.
    zs = tmp_path / "zero_shot"
    proc = run_tool("train_net.py", "--config-file", str(CONFIGS / "cascade_mask_rcnn_R_18_FPN_synthetic.yaml"),
                    "--num-gpus", "2", "--train-dataset", f"coco:{pl}:{folder}", "--test-dataset", gt_spec,
                    *SMALL, "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(zs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (zs / "model_final.pth").is_file() and (zs / "log.txt.rank1").is_file()
    assert set(json.loads((zs / "eval_results.json").read_text())) == {"bbox", "segm"}

    # 3. Its predictions on the folder (no ground truth): results + PNGs, no metrics.
    pred = tmp_path / "pred"
    assert run(["--config-file", str(CONFIGS / "cascade_mask_rcnn_R_18_FPN_synthetic.yaml"), "--eval-only",
                "--test-dataset", images_spec, *SMALL, "MODEL.WEIGHTS", str(zs / "model_final.pth"),
                "CAD.VIS_NUM_IMAGES", "2", "CAD.VIS_SCORE_THRESH", "0.0", "OUTPUT_DIR", str(pred)]) == 0
    results = _results(pred, images_spec)
    assert results and {r["image_id"] for r in results} <= set(sizes)
    _check_masks(results, sizes, pseudo_labels=False)
    assert not (pred / "eval_results.json").exists()
    vis = next((pred / "inference").glob("images_photos_*/vis"))
    assert sorted(p.name for p in vis.iterdir()) == ["photo_0.png", "photo_1.png"]

    # 4. Self-training JSON from the folder itself (no annotation file).
    threshold = float(np.median([r["score"] for r in results]))
    proc = run_tool("self_training_ann.py", "--detectron2-out-dir", str(pred), "--images", str(folder),
                    "--save-path-prefix", str(tmp_path / "self"), "--threshold", str(threshold))
    assert proc.returncode == 0, proc.stderr[-3000:]
    self_json = Path(proc.stdout.strip().splitlines()[-1])
    st = json.loads(self_json.read_text())
    assert st["images"] == votecut["images"]  # the same ids, file names and sizes as VoteCut's
    kept = sorted((r["image_id"], r["score"]) for r in results  # empty masks and sub-pixel boxes are dropped
                  if r["score"] >= threshold and decode_mask(r["segmentation"]).any() and min(r["bbox"][2:]) >= 1)
    assert sorted((a["image_id"], a["score"]) for a in st["annotations"]) == kept and kept
    _check_masks(st["annotations"], sizes)

    # 5. Self-trained detector on it, evaluated on the folder's ground truth as a coco: split.
    self_out = tmp_path / "self_train"
    assert run(["--config-file", str(CONFIGS / "cascade_mask_rcnn_R_18_FPN_synthetic_self_train.yaml"),
                "--train-dataset", f"coco:{self_json}:{folder}", "--test-dataset", gt_spec, *SMALL,
                "SOLVER.IMS_PER_BATCH", "2", "MODEL.WEIGHTS", str(zs / "model_final.pth"),
                "OUTPUT_DIR", str(self_out)]) == 0
    metrics = json.loads((self_out / "eval_results.json").read_text())
    # The same AP from the raw files: the coco: split keeps the ground truth's ids, sizes and masks.
    final = next((self_out / "inference").glob("coco_gt_*/coco_instances_results.json"))
    proc = run_tool("eval_pseudo_masks.py", "--gt", str(gt), "--pred", str(final), "--iou-type", "segm",
                    "--out", str(tmp_path / "m.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw_metrics = json.loads((tmp_path / "m.json").read_text())
    assert {k: raw_metrics[k] for k in ("AP", "AP50", "AR@100")} == pytest.approx(
        {k: metrics["segm"][k] for k in ("AP", "AP50", "AR@100")}, abs=1e-6, nan_ok=True)
