"""Pseudo-label meta-architectures through tools/train_net.py --eval-only, against tools/discover.py,
and through tools/visualize.py --config-file; random-init ViTs saved in the official layout."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from cad.backbones.vit import save_random_checkpoint
from cad.data.coco import register_class_agnostic_coco
from cad.data.synthetic import SHAPES_SPLITS, render_image
from cad.discovery.cli import run as discover
from cad.engine.cli import run as train_net
from cad.evaluation.corloc import dataset_corloc
from cad.utils.io import atomic_write_json, atomic_write_png

from conftest import REPO, run_tool

TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}
TINY_SPLIT = "synthetic_shapes_tiny_val"
EQ_SPLIT = "metaarch_equality"  # 3 images of different sizes, box ground truth
EQ_SIZES = [(96, 128), (128, 80), (112, 112)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny random ViT-S/16 and ViT-S/8 (2 blocks, width 48) and a full-size random ViT-S/16."""
    d = tmp_path_factory.mktemp("ckpts")
    return {
        "s16": save_random_checkpoint("dino_vits16", d / "s16.pth", seed=1, **TINY_VIT),
        "s8": save_random_checkpoint("dino_vits8", d / "s8.pth", seed=2, **TINY_VIT),
        "full": save_random_checkpoint("dino_vits16", d / "dino_deitsmall16_pretrain.pth", seed=3),
    }


@pytest.fixture(scope="module")
def equality_split(tmp_path_factory):
    """Crops of generated shapes images, registered as a class-agnostic split with box ground truth."""
    root = tmp_path_factory.mktemp("eq")
    images, annotations = [], []
    for i, (h, w) in enumerate(EQ_SIZES):
        image, masks = render_image(SHAPES_SPLITS[TINY_SPLIT], i)
        atomic_write_png(root / "images" / f"{i}.png", image[:h, :w])
        images.append({"id": i + 10, "file_name": f"{i}.png", "height": h, "width": w})
        for mask, _ in masks:
            ys, xs = np.nonzero(mask[:h, :w])
            if len(xs):
                box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
                annotations.append({"id": len(annotations) + 1, "image_id": i + 10, "category_id": 1, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0})
    atomic_write_json(root / "gt.json", {"images": images, "annotations": annotations,
                                         "categories": [{"id": 1, "name": "object"}]})
    if EQ_SPLIT not in DatasetCatalog.list():
        register_class_agnostic_coco(EQ_SPLIT, root / "gt.json", root / "images", "tests", eval_tasks=("bbox",))
    return EQ_SPLIT


def _eval_only(config: str, out: Path, *opts) -> dict:
    argv = ["--config-file", str(REPO / "configs" / config), "--eval-only", "OUTPUT_DIR", str(out),
            "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", *[str(o) for o in opts]]
    assert train_net(argv) == 0
    return json.loads((out / "eval_results.json").read_text())


def _tiny(*weights):
    return ["CAD.DISCOVERY.WEIGHTS", str([str(w) for w in weights])]


def test_lost_eval_only_reports_corloc_and_box_ap(ckpts, tmp_path):
    metrics = _eval_only("LOST/lost_synthetic.yaml", tmp_path, "DATASETS.TEST", f"('{TINY_SPLIT}',)", *_tiny(ckpts["s16"]))
    assert set(metrics) == {"corloc", "bbox"}
    assert "CorLoc" in (tmp_path / "log.txt").read_text()
    results = json.loads((tmp_path / "inference" / TINY_SPLIT / "coco_instances_results.json").read_text())
    assert len(results) == 8 and all("segmentation" not in r for r in results)  # one box per image
    # the reported CorLoc is that of the dumped boxes (XYWH -> XYXY) against the split's ground truth
    boxes = {r["image_id"]: np.array([[x, y, x + w, y + h] for x, y, w, h in [r["bbox"]]]) for r in results}
    assert metrics["corloc"]["CorLoc"] == pytest.approx(100 * dataset_corloc(TINY_SPLIT, boxes))


@pytest.mark.parametrize("config, weights", [("CutLER/maskcut_synthetic.yaml", ["s16"]),
                                             ("CuVLER/votecut_synthetic.yaml", ["s16", "s8"])])
def test_mask_methods_eval_only_report_box_and_mask_ap(ckpts, tmp_path, config, weights):
    metrics = _eval_only(config, tmp_path, "DATASETS.TEST", f"('{TINY_SPLIT}',)", *_tiny(*[ckpts[w] for w in weights]),
                         "CAD.DISCOVERY.RESOLUTION", 128, "CAD.EVAL_DUMP_TRAINING_JSON", "pl_{dataset}.json")
    assert set(metrics) == {"bbox", "segm"}
    assert {"AP", "AP50", "AR@100"} <= set(metrics["segm"])
    pl = json.loads((tmp_path / "inference" / TINY_SPLIT / f"pl_{TINY_SPLIT}.json").read_text())
    assert len(pl["images"]) == 8 and pl["annotations"] and pl["categories"] == [{"id": 1, "name": "object"}]
    for ann in pl["annotations"]:
        assert {"id", "image_id", "bbox", "score", "area", "iscrowd", "segmentation"} <= set(ann)
        assert ann["segmentation"]["size"] == [128, 128] and isinstance(ann["segmentation"]["counts"], str)


@pytest.mark.parametrize(
    "method, config, discover_args, opts",
    [
        ("lost", "LOST/lost_synthetic.yaml", [], []),
        ("maskcut", "CutLER/maskcut_synthetic.yaml", [], ["CAD.DISCOVERY.RESOLUTION", 480]),
        ("votecut", "CuVLER/votecut_synthetic.yaml", ["--no-crf"],
         ["CAD.DISCOVERY.RESOLUTION", 480, "CAD.DISCOVERY.CRF", False, "CAD.DISCOVERY.ARCHS", "['dino_vits16']"]),
    ],
)
def test_meta_architecture_equals_discover_cli(ckpts, equality_split, tmp_path, method, config, discover_args, opts):
    """tools/discover.py and the meta-architecture (its training-JSON dump) give the same JSON.

    discover.py has no architecture overrides, so both use the full-size random ViT-S/16 and the
    methods' default settings; --batch-size 1 as Detectron2's test loader.
    """
    cli_json = tmp_path / "cli.json"
    assert discover([method, "--dataset", equality_split, "--out", str(cli_json), "--arch", "dino_vits16",
                     "--weights", str(ckpts["full"]), "--device", "cpu", "--batch-size", "1", *discover_args]) == 0
    _eval_only(config, tmp_path / "d2", "DATASETS.TEST", f"('{equality_split}',)", *_tiny(ckpts["full"]),
               "CAD.DISCOVERY.VIT_DEPTH", 0, "CAD.DISCOVERY.VIT_EMBED_DIM", 0, "CAD.DISCOVERY.VIT_NUM_HEADS", 0,
               "CAD.EVAL_DUMP_TRAINING_JSON", str(tmp_path / "d2.json"), *opts)
    cli, d2 = (json.loads(p.read_text()) for p in (cli_json, tmp_path / "d2.json"))
    assert [im["id"] for im in cli["images"]] == [10, 11, 12] and cli["annotations"]
    info = cli.pop("info")  # the pipeline's counts; the training-JSON dump has none
    assert info == {"num_images": 3, "num_annotations": len(cli["annotations"]), "unreadable_images": 0}
    assert d2 == cli


def test_training_a_pseudo_labeller_is_refused_with_one_line():
    proc = run_tool("train_net.py", "--config-file", str(REPO / "configs" / "LOST" / "lost_synthetic.yaml"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no trainable parameters" in lines[0] and "--eval-only" in lines[0]
    assert "Traceback" not in proc.stderr


def test_visualize_live_model_writes_pngs_next_to_ground_truth(ckpts, tmp_path):
    out = tmp_path / "vis"
    proc = run_tool("visualize.py", "--dataset", TINY_SPLIT, "--config-file", str(REPO / "configs/CutLER/maskcut_synthetic.yaml"),
                    "--num-images", "2", "--score-thresh", "0", "--out", str(out),
                    "MODEL.DEVICE", "cpu", "CAD.DISCOVERY.RESOLUTION", "128", *_tiny(ckpts["s16"]),
                    env={"DETECTRON2_DATASETS": os.environ["DETECTRON2_DATASETS"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    from PIL import Image

    assert Image.open(pngs[0]).size == (256, 128)  # ground truth | pseudo-labels, 128x128 each
