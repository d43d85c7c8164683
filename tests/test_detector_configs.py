"""The CutLER/CuVLER configs parse, select the pseudo-label heads and build (R50 on CPU)."""
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from cad.config import add_cad_config
from cad.engine.setup import adapt_to_device
from cad.modeling.roi_heads import PseudoLabelCascadeROIHeads, PseudoLabelFastRCNNOutputLayers

REPO = Path(__file__).resolve().parents[1]
# The detectors; maskcut_*/votecut_* are the pseudo-label meta-architectures (tests/test_pseudo_labelers_*).
CONFIGS = sorted(p for p in (REPO / "configs").glob("Cu*LER/*.yaml") if not p.name.startswith(("maskcut_", "votecut_")))


def _cfg(path: Path):
    cfg = get_cfg()
    add_cad_config(cfg)
    if "SFP" in path.name and "VIT" not in cfg.CAD:
        pytest.skip("ViT variants need cad.backbones' CAD.VIT keys (lost branch)")
    cfg.merge_from_file(str(path))
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_parses(path):
    cfg = _cfg(path)
    assert cfg.MODEL.ROI_HEADS.NAME.startswith("PseudoLabel")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1 and cfg.CAD.TRAINER == "CopyPasteTrainer"
    if cfg.MODEL.ROI_HEADS.SOFT_TARGETS:
        assert cfg.MODEL.ROI_MASK_HEAD.NAME == "PseudoLabelMaskRCNNConvUpsampleHead"


def test_reference_schedules():
    cuvler = _cfg(REPO / "configs/CuVLER/cascade_mask_rcnn_R_50_FPN_votecut_cad.yaml")
    assert (cuvler.SOLVER.BASE_LR, cuvler.SOLVER.MAX_ITER, cuvler.SOLVER.IMS_PER_BATCH) == (0.01, 80000, 16)
    assert cuvler.SOLVER.REFERENCE_WORLD_SIZE == 8 and cuvler.MODEL.ROI_HEADS.DROPLOSS_IOU_THRESH == 0.01
    st = _cfg(REPO / "configs/CuVLER/cascade_mask_rcnn_R_50_FPN_self_train.yaml")
    assert (st.SOLVER.BASE_LR, st.SOLVER.MAX_ITER, st.SOLVER.STEPS) == (0.05, 14800, (7400,))
    assert not st.DATALOADER.COPY_PASTE_RANDOM_NUM and st.DATALOADER.COPY_PASTE_MIN_RATIO == 0.5
    cutler_st = _cfg(REPO / "configs/CutLER/cascade_mask_rcnn_R_50_FPN_self_train.yaml")
    assert not cutler_st.MODEL.ROI_HEADS.USE_DROPLOSS and cutler_st.SOLVER.GAMMA == 1.0


def test_r50_cascade_builds_with_pseudo_label_predictors():
    cfg = _cfg(REPO / "configs/CuVLER/cascade_mask_rcnn_R_50_FPN_votecut_cad.yaml")
    cfg.MODEL.WEIGHTS = ""
    adapt_to_device(cfg)
    heads = build_model(cfg).roi_heads
    assert isinstance(heads, PseudoLabelCascadeROIHeads)
    assert [type(p) for p in heads.box_predictor] == [PseudoLabelFastRCNNOutputLayers] * 3
    assert [p.box2box_transform.weights for p in heads.box_predictor] == [
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)
    ]
    assert all(p.soft_targets and p.use_droploss for p in heads.box_predictor) and heads.mask_head.soft_targets
