"""The LOST discovery method (pipeline contract) on a small random-init ViT saved in the official layout."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cad.backbones import build_vit, extract_features, preprocess_lost, save_random_checkpoint
from cad.backbones.vit import DINO_INTERPOLATE_OFFSET
from cad.discovery.lost import LOST, lost
from cad.discovery.method import DISCOVERY_METHODS, DiscoveryImage

torch.set_num_threads(1)
SMALL = dict(depth=2, embed_dim=48, num_heads=2)


def _images():
    rng = np.random.default_rng(0)
    images = []
    for height, width in [(50, 70), (50, 70), (37, 90)]:
        image = np.full((height, width, 3), 120, dtype=np.uint8)
        image[10:30, 20:45] = rng.integers(0, 255, size=(20, 25, 3), dtype=np.uint8)
        images.append(image)
    return images


@pytest.fixture(scope="module")
def method(tmp_path_factory):
    path = save_random_checkpoint("dino_vits16", tmp_path_factory.mktemp("w") / "vit.pth", **SMALL)
    options = SimpleNamespace(models=(("dino_vits16", str(path)),), device="cpu")
    return LOST(options, **SMALL), path


def test_registered_and_lazy(method):
    assert DISCOVERY_METHODS["lost"] is LOST
    assert LOST(SimpleNamespace(models=(), device="cpu"))._model is None  # no ViT until stage 1
    with pytest.raises(ValueError, match="one ViT"):
        LOST(SimpleNamespace(models=(("dino_vits16", None), ("dino_vits8", None)), device="cpu"))


def test_stage1_is_lost_on_the_padded_full_resolution_image(method):
    lost_method, path = method
    images = _images()
    items = [DiscoveryImage(i, f"{i}.jpg", image) for i, image in enumerate(images)]
    arrays = lost_method.stage1(items)
    model = build_vit("dino_vits16", path, **SMALL)
    model.interpolate_offset = DINO_INTERPOLATE_OFFSET  # LOST's DINO resizes its position embedding so
    for image, out in zip(images, arrays):
        # Each image alone: normalised, zero-padded to a multiple of 16, keys of the last block.
        feats = extract_features(model, preprocess_lost(image, 16)[None])
        expected = lost(feats.keys[0], feats.grid, 16, image.shape[:2])
        np.testing.assert_allclose(out["boxes"][0], expected.box)
        assert out["seeds"][0] == expected.seed
        assert tuple(out["grid"]) == feats.grid == (-(-image.shape[0] // 16), -(-image.shape[1] // 16))
        x0, y0, x1, y1 = out["boxes"][0]
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    annotations = lost_method.stage2(items[2], arrays[2])
    x0, y0, x1, y1 = arrays[2]["boxes"][0].tolist()
    assert annotations == [{"bbox": [x0, y0, x1 - x0, y1 - y0], "score": pytest.approx(float(arrays[2]["scores"][0]))}]


def test_multi_object_method_keeps_the_single_box_first(method):
    _, path = method
    options = SimpleNamespace(models=(("dino_vits16", str(path)),), device="cpu")
    single = LOST(options, **SMALL).discover(_images())
    multi = LOST(options, max_objects=4, min_score=0.0, **SMALL).discover(_images())
    for one, many in zip(single, multi):
        assert len(one) == 1 and len(many) >= 1
        np.testing.assert_array_equal(one[0].box, many[0].box)
