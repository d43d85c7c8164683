"""MaskCut / VoteCut method classes: stage 1 -> stage 2 on a generated image with small random ViTs."""
from types import SimpleNamespace

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from cad.backbones import save_random_checkpoint
from cad.discovery.maskcut import MaskCut
from cad.discovery.method import DISCOVERY_METHODS, DiscoveryImage
from cad.discovery.votecut import VoteCut, VotedMask, votecut_scores

torch.set_num_threads(1)
SMALL = dict(depth=2, embed_dim=48, num_heads=2)


def _image(height=72, width=96):
    rng = np.random.RandomState(0)
    img = (rng.rand(height, width, 3) * 40).astype(np.uint8)
    img[10:40, 12:44] = (220, 40, 40)
    img[45:68, 55:90] = (40, 200, 60)
    return DiscoveryImage(image_id=7, file_name="gen.png", image=img)


def _check_annotations(anns, height, width):
    for ann in anns:
        assert ann["category_id"] == 1 and 0 < ann["score"] <= 1
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert list(rle["size"]) == [height, width]
        mask = mask_util.decode(rle)
        assert mask.any()
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("vits")
    return {a: str(save_random_checkpoint(a, root / f"{a}.pth", **SMALL)) for a in ("dino_vitb8", "dino_vits16", "dinov2_vits14")}


def test_registered():
    assert DISCOVERY_METHODS["maskcut"] is MaskCut and DISCOVERY_METHODS["votecut"] is VoteCut


@pytest.mark.parametrize("crf", [True, False])
def test_maskcut_stage1_to_stage2(checkpoints, crf):
    opts = SimpleNamespace(models=(("dino_vitb8", checkpoints["dino_vitb8"]),), device="cpu", crf=crf)
    method = MaskCut(opts, resolution=64, **SMALL)
    item = _image()
    (arrays,) = method.stage1([item])
    assert set(arrays) == {"cuts"} and arrays["cuts"].shape == (3, 8, 8) and arrays["cuts"].dtype == np.uint8
    assert arrays["cuts"][0].any()
    # stage 2 runs in another process in the pipeline: a fresh instance without the ViT
    fresh = MaskCut(opts, resolution=64, **SMALL)
    anns = fresh.stage2(item, arrays)
    assert fresh._model is None and 1 <= len(anns) <= 3
    _check_annotations(anns, 72, 96)


def test_maskcut_batch_equals_single(checkpoints):
    opts = SimpleNamespace(models=(("dino_vitb8", checkpoints["dino_vitb8"]),), device="cpu", crf=False)
    method = MaskCut(opts, resolution=64, **SMALL)
    a, b = _image(), _image(50, 60)
    both = method.stage1([a, b])
    np.testing.assert_array_equal(both[1]["cuts"], method.stage1([b])[0]["cuts"])


def test_votecut_stage1_to_stage2(checkpoints):
    models = tuple((a, checkpoints[a]) for a in ("dino_vits16", "dinov2_vits14", "dino_vitb8"))
    method = VoteCut(SimpleNamespace(models=models, device="cpu", crf=True), resolution=112, **SMALL)
    item = _image()
    (arrays,) = method.stage1([item])
    # grids: 112/16 = 7, 112 -> 112 = 8 * 14, 112/8 = 14
    assert [arrays[f"eigvec_{i}"].shape for i in range(3)] == [(7, 7), (8, 8), (14, 14)]
    assert all(arrays[f"eigvec_{i}"].dtype == np.float64 for i in range(3))
    anns = VoteCut(SimpleNamespace(models=models, device="cpu", crf=True), resolution=112, **SMALL).stage2(item, arrays)
    _check_annotations(anns, 72, 96)
    scores = [a["score"] for a in anns]
    assert len(anns) >= 1 and scores[0] == 1.0 and scores == sorted(scores, reverse=True)
    plain = VoteCut(SimpleNamespace(models=models, device="cpu", crf=False), resolution=112, **SMALL).stage2(item, arrays)
    assert len(plain) == len(anns)
    _check_annotations(plain, 72, 96)


def test_votecut_scores():
    masks = [VotedMask(np.ones((1, 1), bool), np.ones((1, 1), bool), n, True) for n in (8, 4, 2)]
    assert votecut_scores(masks) == [1.0, 0.5, 0.25]


def test_default_models_follow_the_references():
    assert MaskCut().arch == "dino_vitb8"
    assert [a for a, _ in VoteCut().models] == [
        "dino_vits16", "dinov2_vitb14", "dinov2_vits14", "dino_vitb16", "dino_vits8", "dino_vitb8"
    ]
    with pytest.raises(ValueError, match="one ViT"):
        MaskCut(SimpleNamespace(models=(("dino_vits8", None), ("dino_vitb8", None))))
