"""LOST/MaskCut/VoteCut meta-architectures: config keys, building, Detectron2 inputs/outputs, errors."""
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model

import cad  # noqa: F401  (registers the meta-architectures)
from cad.backbones.vit import WeightsNotFoundError, save_random_checkpoint
from cad.config import add_cad_config
from cad.discovery import lost, maskcut, ncut, votecut
from cad.discovery.method import DiscoveryImage
from cad.engine.setup import ConfigError, check_trainable
from cad.modeling.pseudo_labelers import models_from_cfg

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}
TINY_OPTS = ["CAD.DISCOVERY.VIT_DEPTH", 2, "CAD.DISCOVERY.VIT_EMBED_DIM", 48, "CAD.DISCOVERY.VIT_NUM_HEADS", 2]


def _cfg(config: str, *opts):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(REPO / "configs" / config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *[str(o) for o in opts]])
    return cfg


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_random_checkpoint("dino_vits16", tmp_path_factory.mktemp("ckpt") / "vits16.pth", seed=1, **TINY_VIT)


def test_config_defaults_are_the_methods_constants():
    cfg = get_cfg()
    add_cad_config(cfg)
    assert cfg.CAD.LOST.K_PATCHES == lost.K_PATCHES == 100
    assert cfg.CAD.DISCOVERY.TAU == ncut.TAU == maskcut.TAU
    assert cfg.CAD.DISCOVERY.RESOLUTION == maskcut.RESOLUTION == votecut.RESOLUTION
    assert (cfg.CAD.MASKCUT.N_CUTS, cfg.CAD.MASKCUT.CRF_IOU) == (maskcut.N_CUTS, maskcut.CRF_IOU)
    v = cfg.CAD.VOTECUT
    assert tuple(v.KS) == votecut.KS
    assert (v.IOU_THRESHOLD, v.VOTE_THRESHOLD, v.MAX_MASKS) == (
        votecut.IOU_THRESHOLD, votecut.VOTE_THRESHOLD, votecut.MAX_MASKS
    )
    for cls in (maskcut.MaskCut, votecut.VoteCut):  # the method classes' own defaults (tools/discover.py)
        params = inspect.signature(cls).parameters
        assert params["solver"].default == cfg.CAD.DISCOVERY.SOLVER and cfg.CAD.DISCOVERY.SOLVER in ncut.SOLVERS
        assert params["resolution"].default == cfg.CAD.DISCOVERY.RESOLUTION and params["tau"].default == cfg.CAD.DISCOVERY.TAU
    assert cfg.CAD.EVAL_DUMP_TRAINING_JSON == "" and list(cfg.CAD.EVAL_EXTRA_TYPES) == []


@pytest.mark.parametrize(
    "config, arch, archs, dataset",
    [
        ("LOST/lost_dino_vits16_voc07.yaml", "LOST", ["dino_vits16"], "voc07_trainval"),
        ("LOST/lost_dino_vits8_voc12.yaml", "LOST", ["dino_vits8"], "voc12_trainval"),
        ("LOST/lost_dino_vitb16_coco20k.yaml", "LOST", ["dino_vitb16"], "coco20k_train"),
        ("CutLER/maskcut_dino_vitb8_imagenet.yaml", "MaskCut", ["dino_vitb8"], "imagenet_val_cls_agnostic"),
        ("CuVLER/votecut_imagenet.yaml", "VoteCut", list(votecut.VOTECUT_MODELS), "imagenet_val_cls_agnostic"),
    ],
)
def test_paper_configs(config, arch, archs, dataset):
    cfg = _cfg(config)
    assert cfg.MODEL.META_ARCHITECTURE == arch and list(cfg.CAD.DISCOVERY.ARCHS) == archs
    assert cfg.DATASETS.TEST == (dataset,) and cfg.INPUT.MIN_SIZE_TEST == 0 and cfg.MODEL.WEIGHTS == ""
    assert list(cfg.CAD.EVAL_EXTRA_TYPES) == (["corloc"] if arch == "LOST" else [])
    kwargs = META_ARCH_REGISTRY.get(arch).from_config(cfg)
    assert kwargs["options"].models == tuple((a, None) for a in archs)  # torch.hub cache


def test_all_nine_lost_configs_exist():
    names = {p.name for p in (REPO / "configs" / "LOST").glob("lost_*.yaml")}
    for a in ("dino_vits16", "dino_vits8", "dino_vitb16"):
        for d in ("voc07", "voc12", "coco20k"):
            assert f"lost_{a}_{d}.yaml" in names


def test_method_kwargs_follow_the_config():
    cfg = _cfg("CuVLER/votecut_synthetic.yaml", "CAD.VOTECUT.KS", "[2, 4]", "CAD.VOTECUT.VOTE_THRESHOLD", 0.3,
               "CAD.DISCOVERY.TAU", 0.2, "CAD.DISCOVERY.CRF", False)
    kw = META_ARCH_REGISTRY.get("VoteCut").from_config(cfg)
    assert kw["options"].crf is False and kw["options"].models == (("dino_vits16", "random"), ("dino_vits8", "random"))
    m = kw["method_kwargs"]
    assert m["ks"] == (2, 4) and m["vote_threshold"] == 0.3 and m["tau"] == 0.2 and m["resolution"] == 224
    assert (m["depth"], m["embed_dim"], m["num_heads"]) == (2, 48, 2)
    lost_kw = META_ARCH_REGISTRY.get("LOST").from_config(_cfg("LOST/lost_synthetic.yaml", "CAD.LOST.K_PATCHES", 7))
    assert lost_kw["method_kwargs"]["k_patches"] == 7


def test_bad_weights_fail_at_build_time():
    with pytest.raises(ValueError, match="WEIGHTS has 1 entries but CAD.DISCOVERY.ARCHS has 2"):
        models_from_cfg(_cfg("CuVLER/votecut_synthetic.yaml", "CAD.DISCOVERY.WEIGHTS", "['random']"))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_model(_cfg("LOST/lost_synthetic.yaml", "CAD.DISCOVERY.WEIGHTS", "['/nonexistent/ckpt.pth']"))


def test_check_trainable():
    with pytest.raises(ConfigError, match="MaskCut generates pseudo-labels.*--eval-only"):
        check_trainable(_cfg("CutLER/maskcut_synthetic.yaml"))
    check_trainable(_cfg("MaskRCNN/mask_rcnn_R_18_FPN_synthetic.yaml"))  # a detector trains


def _inputs(image_rgb: np.ndarray, fmt: str, image_id: int = 3):
    chw = image_rgb if fmt == "RGB" else image_rgb[:, :, ::-1]
    h, w = image_rgb.shape[:2]
    return {"image": torch.from_numpy(np.ascontiguousarray(chw)).permute(2, 0, 1), "height": h, "width": w,
            "image_id": image_id, "file_name": "x.png"}


def _image(h=70, w=100):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    image[20:50, 30:70] = rng.integers(180, 255, size=(30, 40, 3), dtype=np.uint8)
    return image


def test_lost_model_matches_method_on_rgb_and_bgr_inputs(tiny_ckpt):
    model = build_model(_cfg("LOST/lost_synthetic.yaml", "CAD.DISCOVERY.WEIGHTS", f"['{tiny_ckpt}']"))
    assert not list(model.parameters())  # nothing to train
    model.eval()
    image = _image()
    direct = model.method.discover([image])[0][0]
    for fmt in ("RGB", "BGR"):
        model.input_format = fmt
        (out,) = model([_inputs(image, fmt)])
        inst = out["instances"]
        assert inst.image_size == (70, 100) and len(inst) == 1 and not inst.has("pred_masks")
        assert inst.pred_boxes.tensor[0].tolist() == direct.box.tolist()
        assert inst.scores.dtype == torch.float64 and inst.scores[0].item() == pytest.approx(direct.score, abs=1e-7)
        assert inst.pred_classes.tolist() == [0]
    model.train()
    with pytest.raises(RuntimeError, match="no trainable parameters"):
        model([_inputs(image, "BGR")])


def test_maskcut_model_masks_at_original_size_and_resized_input(tiny_ckpt, caplog):
    cfg = _cfg("CutLER/maskcut_synthetic.yaml", "CAD.DISCOVERY.WEIGHTS", f"['{tiny_ckpt}']", "CAD.DISCOVERY.CRF", False,
               "CAD.DISCOVERY.RESOLUTION", 64)
    model = build_model(cfg).eval()
    image = _image()
    (out,) = model([_inputs(image, "RGB")])
    inst = out["instances"]
    assert inst.pred_masks.shape[1:] == (70, 100) and inst.pred_masks.dtype == torch.bool and len(inst) >= 1
    # the same annotations as the method's own stage1 + stage2 (what tools/discover.py runs)
    item = DiscoveryImage(3, "x.png", image)
    anns = model.method.stage2(item, model.method.stage1([item])[0])
    assert len(anns) == len(inst)
    for ann, box in zip(anns, inst.pred_boxes.tensor.tolist()):
        x, y, w, h = ann["bbox"]
        assert box == [x, y, x + w, y + h]
    # an input resized by the mapper is resized back to (height, width), with a warning
    small = torch.nn.functional.interpolate(_inputs(image, "RGB")["image"][None].float(), size=(35, 50))[0].byte()
    (out2,) = model([{**_inputs(image, "RGB"), "image": small}])
    assert out2["instances"].image_size == (70, 100) and "resized image" in caplog.text
