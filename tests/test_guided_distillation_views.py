"""Weak/strong views share the geometry; LSJ augmentation gives fixed-size crops."""
import numpy as np
import torch
from detectron2.config import get_cfg
from PIL import Image

from cad.config import add_cad_config
from cad.data.views import WeakStrongMapper, build_mask2former_augmentation


def _cfg(aug: str):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MASK2FORMER_AUGMENTATION = aug
    cfg.INPUT.IMAGE_SIZE = 64
    return cfg


def test_weak_strong_same_geometry_photometric_only(tmp_path):
    rng = np.random.default_rng(0)
    img = np.zeros((48, 80, 3), np.uint8)
    img[10:30, 20:60] = rng.integers(100, 255, size=3)
    path = tmp_path / "a.png"
    Image.fromarray(img).save(path)
    cfg = _cfg("lsj")
    cfg.SSL.STRONG_COLOR_JITTER_PROB = 1.0  # always jitter
    torch.manual_seed(0)
    out = WeakStrongMapper(cfg)({"file_name": str(path), "image_id": 7, "annotations": [{"bbox": [0, 0, 1, 1]}]})
    weak, strong = out["image"], out["image_strong"]
    assert weak.shape == strong.shape == (3, 64, 64)  # FixedSizeCrop(64) with padding
    assert "annotations" not in out and out["image_id"] == 7 and (out["height"], out["width"]) == (48, 80)
    assert not torch.equal(weak, strong)
    # with every photometric op disabled the strong view IS the weak view: same geometry
    cfg.SSL.STRONG_COLOR_JITTER_PROB = cfg.SSL.STRONG_GRAYSCALE_PROB = cfg.SSL.STRONG_BLUR_PROB = 0.0
    out = WeakStrongMapper(cfg)({"file_name": str(path), "image_id": 7})
    assert torch.equal(out["image"], out["image_strong"])


def test_augmentation_kinds():
    names = [type(a).__name__ for a in build_mask2former_augmentation(_cfg("lsj"), True)]
    assert names == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    names = [type(a).__name__ for a in build_mask2former_augmentation(_cfg("lsj"), False)]
    assert names == ["ResizeShortestEdge"]
