"""LOST+CAD and LOST+OD configs equal valeoai/LOST's tools/configs/RN50_DINO_FRCNN_*.yaml, key by key.

OFFICIAL holds every key the five official files set (transcribed from them); the official files
have no _BASE_, so every other key is Detectron2's default. Each cad config, merged as
tools/train_net.py merges it (before the per-machine adaptation), must equal Detectron2's defaults
+ the official keys on every key of the merged tree, except the dataset names (mapped to cad's
splits below), the weights path and the output folder.
"""
import copy

import pytest
from detectron2.config import CfgNode, get_cfg

from cad.config import add_cad_config
from conftest import REPO

_COMMON = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "RPN": {"PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 1000},
        "MASK_ON": False,
        "RESNETS": {"DEPTH": 50, "STRIDE_IN_1X1": False, "NORM": "SyncBN"},
        "ROI_HEADS": {"NAME": "Res5ROIHeadsExtraNorm"},
        "BACKBONE": {"FREEZE_AT": 2},
        "ROI_BOX_HEAD": {"NORM": "SyncBN"},
        "PIXEL_MEAN": [123.675, 116.280, 103.530],
        "PIXEL_STD": [58.395, 57.120, 57.375],
    },
    "INPUT": {"MIN_SIZE_TRAIN": (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800), "MIN_SIZE_TEST": 800, "FORMAT": "RGB"},
    "TEST": {"EVAL_PERIOD": 5000, "PRECISE_BN": {"ENABLED": True}},
    "SOLVER": {"STEPS": (18000, 22000), "MAX_ITER": 24000, "WARMUP_ITERS": 100, "IMS_PER_BATCH": 16, "BASE_LR": 0.02},
}
# file -> (keys beyond _COMMON, official DATASETS.TRAIN, official DATASETS.TEST)
OFFICIAL = {
    "RN50_DINO_FRCNN_VOC07_CAD.yaml": (
        {"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 1, "SCORE_THRESH_TEST": 0.01, "NMS_THRESH_TEST": 0.4}}, "SOLVER": {"MAX_ITER": 10000}},
        "voc_2007_trainval_LOST_CAD", "voc_2007_test_CAD_coco_style",
    ),
    "RN50_DINO_FRCNN_VOC12_CAD.yaml": (
        {"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 1}}}, "voc_2012_trainval_LOST_CAD", "voc_2007_test_CAD_coco_style",
    ),
    "RN50_DINO_FRCNN_COCO20k_CAD.yaml": (
        {"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 1, "SCORE_THRESH_TEST": 0.01, "NMS_THRESH_TEST": 0.4}}},
        "coco20k_train_LOST_CAD", "coco20k_train_CAD_gt",
    ),
    "RN50_DINO_FRCNN_VOC07_OD.yaml": (
        {"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 20, "SCORE_THRESH_TEST": 0.005, "NMS_THRESH_TEST": 0.4}}},
        "voc_2007_trainval_LOST_OD_clu20", "voc_2007_test_coco_style",
    ),
    "RN50_DINO_FRCNN_VOC12_OD.yaml": (
        {"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 20, "SCORE_THRESH_TEST": 0.005, "NMS_THRESH_TEST": 0.4}}},
        "voc_2012_trainval_LOST_OD_clu20", "voc_2007_test_coco_style",
    ),
}
# official dataset -> the cad split with the same images, boxes and evaluation
DATASETS = {
    "voc_2007_trainval_LOST_CAD": "voc07_trainval_lost",
    "voc_2012_trainval_LOST_CAD": "voc12_trainval_lost",
    "coco20k_train_LOST_CAD": "coco20k_train_lost",
    "voc_2007_test_CAD_coco_style": "voc07_test_lost_cad",
    "coco20k_train_CAD_gt": "coco20k_train_lost_cad",
    "voc_2007_trainval_LOST_OD_clu20": "voc07_trainval_lost_od",
    "voc_2012_trainval_LOST_OD_clu20": "voc12_trainval_lost_od",
    "voc_2007_test_coco_style": "voc07_test_lost_od",
}
CAD_CONFIGS = {
    "faster_rcnn_R_50_C4_lost_cad_voc07.yaml": "RN50_DINO_FRCNN_VOC07_CAD.yaml",
    "faster_rcnn_R_50_C4_lost_cad_voc12.yaml": "RN50_DINO_FRCNN_VOC12_CAD.yaml",
    "faster_rcnn_R_50_C4_lost_cad_coco20k.yaml": "RN50_DINO_FRCNN_COCO20k_CAD.yaml",
    "faster_rcnn_R_50_C4_lost_od_voc07.yaml": "RN50_DINO_FRCNN_VOC07_OD.yaml",
    "faster_rcnn_R_50_C4_lost_od_voc12.yaml": "RN50_DINO_FRCNN_VOC12_OD.yaml",
}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _flat(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", (list(v) if isinstance(v, (list, tuple)) else v)


def _cfg(official: dict = None, path=None) -> dict:
    cfg = get_cfg()
    add_cad_config(cfg)
    if official is not None:
        cfg.merge_from_other_cfg(CfgNode(official))
    else:
        cfg.merge_from_file(str(path))
    return dict(_flat(cfg))


@pytest.mark.parametrize("config", sorted(CAD_CONFIGS))
def test_lost_detector_config_equals_official(config):
    extra, train, test = OFFICIAL[CAD_CONFIGS[config]]
    official = _cfg(_merge(_COMMON, extra))
    ours = _cfg(path=REPO / "configs" / "LOST" / config)
    assert ours["DATASETS.TRAIN"] == [DATASETS[train]] and ours["DATASETS.TEST"] == [DATASETS[test]]
    different = {k: (ours[k], official[k]) for k in official if ours[k] != official[k]}
    assert set(different) <= {"DATASETS.TRAIN", "DATASETS.TEST", "MODEL.WEIGHTS", "OUTPUT_DIR"}, different
    assert set(ours) == set(official)


def test_lost_cad_voc07_schedule_is_the_readmes():
    """LOST's README: class-agnostic training on VOC07 runs 10K iterations, the others 24K."""
    voc07, voc12 = (_cfg(path=REPO / "configs/LOST" / f"faster_rcnn_R_50_C4_lost_cad_{s}.yaml") for s in ("voc07", "voc12"))
    assert (voc07["SOLVER.MAX_ITER"], voc12["SOLVER.MAX_ITER"]) == (10000, 24000)
    assert (voc07["MODEL.ROI_HEADS.SCORE_THRESH_TEST"], voc12["MODEL.ROI_HEADS.SCORE_THRESH_TEST"]) == (0.01, 0.05)
