"""The patched Detectron2 0.6 install: imports, stand-in _C, numpy 2 / Pillow 10 fixes, models build."""
import numpy as np
import pytest
import torch
from detectron2 import _C, model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, PolygonMasks

import cad  # noqa: F401


def test_stand_in_c_module():
    assert _C.has_cuda() is False
    assert isinstance(_C.get_compiler_version(), str) and isinstance(_C.get_cuda_version(), str)
    from detectron2.layers import nms_rotated

    with pytest.raises(NotImplementedError, match="compiled C\\+\\+/CUDA extension"):
        nms_rotated(torch.zeros(1, 5), torch.ones(1), 0.5)


def test_numpy2_and_pillow10_paths():
    # transforms import used Image.LINEAR; polygons -> bitmasks used np.bool.
    from detectron2.data import transforms as T
    from detectron2.layers.mask_ops import paste_masks_in_image

    assert T.ResizeTransform(4, 4, 8, 8).apply_image(np.zeros((4, 4, 3), np.uint8)).shape == (8, 8, 3)
    poly = PolygonMasks([[np.array([0, 0, 8, 0, 8, 8, 0, 8], dtype=np.float64)]])
    assert BitMasks.from_polygon_masks(poly, 10, 10).tensor.sum() > 0
    pasted = paste_masks_in_image(torch.ones(1, 28, 28), torch.tensor([[1.0, 1.0, 5.0, 5.0]]), (8, 8))
    assert pasted.dtype == torch.bool and pasted.sum() == 16


def test_map_dataset_replaces_a_skipped_item():
    # Detectron2 0.6 draws the replacement with random.sample on a set, which Python 3.11 rejects (patched).
    from detectron2.data.common import MapDataset

    dataset = MapDataset(list(range(4)), lambda x: None if x == 1 else x)
    assert [dataset[i] for i in (0, 2, 3)] == [0, 2, 3]
    assert dataset[1] in {0, 2, 3}


def test_model_zoo_configs_shipped():
    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert path.endswith("mask_rcnn_R_50_FPN_1x.yaml")


def test_coco_evaluator_defaults_to_pycocotools():
    import inspect

    from detectron2.evaluation import COCOEvaluator

    assert inspect.signature(COCOEvaluator.__init__).parameters["use_fast_impl"].default is False


@pytest.mark.parametrize(
    "config", ["COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"]
)
def test_build_and_run_mask_and_cascade_rcnn(config):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    model = build_model(cfg).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8).float(), "height": 96, "width": 128}])
    instances = out["instances"]
    assert instances.image_size == (96, 128)
    assert {"pred_boxes", "scores", "pred_masks"} <= set(instances.get_fields())
