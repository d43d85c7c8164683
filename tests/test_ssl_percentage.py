"""SSL.PERCENTAGE and SSL.TRAIN_SSL on the official command line (GuidedDistillation train_net.py
setup: `DATASETS.TRAIN[0] + f"_{SSL.PERCENTAGE}"`, and its splits named int(100/p) below 1 %)."""
import pytest

from cad.data.ssl_splits import labeled_split_name, percentage_of, split_percentage
from cad.engine.cli import run, train_argument_parser
from cad.engine.setup import build_cfg
from conftest import REPO

GD = REPO / "configs" / "GuidedDistillation"
CITYSCAPES_R50 = GD / "cityscapes" / "instance-segmentation" / "maskformer2_R50_bs16_90k.yaml"
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
