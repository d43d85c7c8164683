"""SSL.PERCENTAGE and SSL.TRAIN_SSL on the official command line (GuidedDistillation train_net.py
setup: `DATASETS.TRAIN[0] + f"_{SSL.PERCENTAGE}"`, and its splits named int(100/p) below 1 %),
including the README's COCO DINOv2 0.4 % commands on a generated 250-image coco_2017_train."""
import json
import os
import shutil

import pytest
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from cad.data.ssl_splits import labeled_split_name, percentage_of, split_percentage
from cad.engine.cli import run, train_argument_parser
from cad.engine.setup import build_cfg
from conftest import REPO

GD = REPO / "configs" / "GuidedDistillation"
# The README's example uses the DINOv2 ViT-L config (configs/GuidedDistillation/coco/dinov2/
# maskformer2_dinov2_large_bs16_50ep.yaml, Guided Distillation backbones work); the ViT-B one
# shares its base, schedule and split handling.
COCO_DINOV2 = GD / "coco" / "dinov2" / "maskformer2_dinov2_large_bs16_50ep.yaml"
TINY_DINOV2 = [
    "CAD.VIT.WEIGHTS", "random", "CAD.VIT.DEPTH", "1", "CAD.VIT.EMBED_DIM", "48", "CAD.VIT.NUM_HEADS", "2",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10", "MODEL.MASK_FORMER.NHEADS", "2", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "INPUT.IMAGE_SIZE", "64",
    "SOLVER.IMS_PER_BATCH", "1", "SSL.IMS_PER_BATCH_UNLABELED", "1", "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
    "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1",
]
CITYSCAPES_R50 = GD / "cityscapes" / "maskformer2_R50_bs16_90k.yaml"
COCO_R50 = GD / "coco" / "Base-R50-teacher.yaml"


def _cfg(config, *opts):
    return build_cfg(train_argument_parser().parse_args(["--config-file", str(config), *opts]))


def test_percentage_convention():
    # 1..100: percent; above 100: 100/value percent (the official 250/500/1000 splits)
    assert [percentage_of(v) for v in (1, 5, 30, 100, 200, 250, 500, 1000)] == [1, 5, 30, 100, 0.5, 0.4, 0.2, 0.1]
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError):
            percentage_of(bad)
    # Cityscapes: the official lists at 5/10/20/30 %, the seeded generator elsewhere
    city = "cityscapes_fine_instance_seg_train"
    assert labeled_split_name(city, 5, 0) == f"{city}_5pct_list_labeled"
    assert labeled_split_name(city, 40, 3) == f"{city}_40pct_seed3_labeled"
    assert labeled_split_name("coco_2017_train", 250, 0) == "coco_2017_train_0.4pct_seed0_labeled"
    assert labeled_split_name("coco_2017_train", 10, 1) == "coco_2017_train_10pct_seed1_labeled"
    with pytest.raises(ValueError, match="no exact split name"):
        labeled_split_name("coco_2017_train", 300, 0)  # 0.333... %
    assert split_percentage(f"{city}_20pct_list_unlabeled") == 20
    assert split_percentage("coco_2017_train_0.4pct_seed2_labeled") == 0.4
    assert split_percentage("coco_2017_train") is None


def test_official_command_lines_pick_split_and_stage():
    # the README's Cityscapes example (stage 1), as written but for cad's config folder
    cfg = _cfg(CITYSCAPES_R50, "--num-gpus", "2", "--num-machines", "1", "SSL.PERCENTAGE", "5", "SSL.TRAIN_SSL", "False")
    assert cfg.DATASETS.TRAIN == ("cityscapes_fine_instance_seg_train_5pct_list_labeled",) and not cfg.SSL.TRAIN_SSL
    # stage 2 is the official default; 0.4 % of COCO as the README's DINOv2 example writes it
    cfg = _cfg(COCO_R50, "SSL.PERCENTAGE", "250", "SSL.TRAIN_SSL", "True", "SSL.SPLIT_SEED", "2")
    assert cfg.DATASETS.TRAIN == ("coco_2017_train_0.4pct_seed2_labeled",) and cfg.SSL.TRAIN_SSL
    assert _cfg(CITYSCAPES_R50).SSL.TRAIN_SSL  # the official default (config/add_cfg.py)
    # 100 keeps the whole split; a saved config.yaml (already the labeled split) loads unchanged
    assert _cfg(COCO_R50, "SSL.PERCENTAGE", "100").DATASETS.TRAIN == ("coco_2017_train",)
    assert _cfg(GD / "coco" / "r50_teacher_2pct.yaml").DATASETS.TRAIN == ("coco_2017_train_2pct_seed0_labeled",)
    again = ("DATASETS.TRAIN", "('coco_2017_train_2pct_seed0_labeled',)", "SSL.PERCENTAGE", "2")
    assert _cfg(COCO_R50, *again).DATASETS.TRAIN == ("coco_2017_train_2pct_seed0_labeled",)


@pytest.mark.parametrize("opts, message", [
    (("SSL.PERCENTAGE", "0.4"), "SSL.PERCENTAGE takes an integer, as the official code: P in 1..100"),
    (("SSL.PERCENTAGE", "0"), "SSL.PERCENTAGE 0: P in 1..100"),
    (("SSL.PERCENTAGE", "300"), "SSL.PERCENTAGE 300 means 0.3333333333333333 %, which has no exact split name"),
    (("SSL.PERCENTAGE", "5", "DATASETS.TRAIN", "('coco_2017_train_1pct_seed0_labeled',)"),
     "DATASETS.TRAIN 'coco_2017_train_1pct_seed0_labeled' is a 1 % split but SSL.PERCENTAGE 5 asks for 5 %"),
    (("SSL.PERCENTAGE", "5", "DATASETS.TRAIN", "('no_such_split',)"), "unknown dataset 'no_such_split'"),
    (("SSL.EVAL_WHO", "everyone"), "SSL.EVAL_WHO is 'everyone'; expected STUDENT, TEACHER or BOTH"),
])
def test_values_cad_cannot_honour_are_one_error_line(opts, message, capsys):
    assert run(["--config-file", str(COCO_R50), *opts]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + message) and "\n" not in err, err


@pytest.fixture(scope="module")
def coco_train2017(datasets_root):
    """$DETECTRON2_DATASETS/coco: 250 train2017 records (the 16 generated tiny shapes images,
    repeated) with COCO's 80 categories, so that 0.4 % of it is 1 labeled image."""
    from detectron2.data import DatasetCatalog

    DatasetCatalog.get("synthetic_shapes_tiny_train")  # generated on first use
    tiny = json.loads((datasets_root / "synthetic" / "annotations" / "shapes_tiny_train.json").read_text())
    coco = datasets_root / "coco"
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    if not (coco / "train2017").exists():
        os.symlink(datasets_root / "synthetic" / "shapes_tiny_train", coco / "train2017")
    images, annotations = [], []
    for i in range(250):
        src = tiny["images"][i % len(tiny["images"])]
        images.append({**src, "id": i + 1})
        for ann in tiny["annotations"]:
            if ann["image_id"] == src["id"]:  # shape ids 1/2/3 are COCO's person/bicycle/car
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": i + 1})
    categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]
    (coco / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    yield coco
    shutil.rmtree(coco)  # the suite's other tests see no COCO under the shared root
    (datasets_root / "ssl_splits" / "coco_2017_train_0.4pct_seed0.json").unlink()


def test_readme_coco_dinov2_commands_at_0_4_percent(coco_train2017, tmp_path, capsys):
    """The README's COCO DINOv2 commands (SSL.PERCENTAGE 250 = 0.4 %), tiny ViT, one process."""
    common = ["--config-file", str(COCO_DINOV2), "SSL.PERCENTAGE", "250"]
    assert run([*common, "SSL.TRAIN_SSL", "False", "OUTPUT_DIR", str(tmp_path / "teacher"), *TINY_DINOV2]) == 0
    saved = (tmp_path / "teacher" / "config.yaml").read_text()
    assert "coco_2017_train_0.4pct_seed0_labeled" in saved
    split = json.loads((coco_train2017.parent / "ssl_splits" / "coco_2017_train_0.4pct_seed0.json").read_text())
    assert len(split["labeled"]) == 1 and len(split["unlabeled"]) == 249  # floor(0.4 * 250 / 100)
    assert run([*common, "SSL.TRAIN_SSL", "True", "SSL.TEACHER_CKPT", str(tmp_path / "teacher" / "model_final.pth"),
                "OUTPUT_DIR", str(tmp_path / "student"), "SSL.BURNIN_ITER", "1", *TINY_DINOV2]) == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "student" / "model_final.pth").is_file()
