"""ImageNet class-agnostic splits: registration, missing files, and loading discover.py output."""
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import check_image_size

from cad.data.imagenet import IMAGENET_SPLITS, register_imagenet_splits
from cad.data.paths import DatasetMissingError, datasets_root
from cad.discovery.cli import run
from cad.discovery.sources import read_rgb

from pipeline_fakes import make_images

torch.set_num_threads(1)


@pytest.fixture
def imagenet_root(tmp_path):
    def register(root):
        for name in IMAGENET_SPLITS:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_imagenet_splits(root)

    register(tmp_path)
    yield tmp_path
    register(datasets_root())


def test_missing_split_names_path_and_section(imagenet_root):
    with pytest.raises(DatasetMissingError, match=r"imagenet/train.*section 'ImageNet'"):
        DatasetCatalog.get("imagenet_train_votecut")
    assert MetadataCatalog.get("imagenet_val_cls_agnostic").eval_tasks == ("bbox",)
    assert MetadataCatalog.get("imagenet_train_maskcut").thing_classes == ["object"]


def test_discover_output_loads_as_training_split(imagenet_root):
    for wnid in ("n01", "n02"):
        make_images(imagenet_root / "imagenet/train" / wnid, [(40, 56), (48, 36)])
    out = imagenet_root / "imagenet/annotations/imagenet_train_votecut.json"
    assert run(["test_grid", "--images", str(imagenet_root / "imagenet/train"), "--out", str(out)]) == 0
    dicts = DatasetCatalog.get("imagenet_train_votecut")
    assert [d["file_name"] for d in dicts] == [
        str(imagenet_root / "imagenet/train" / f"{w}/img_00{i}.png") for w in ("n01", "n02") for i in (0, 1)
    ]
    for d in dicts:
        check_image_size(d, read_rgb(d["file_name"]))  # Detectron2's width/height check
        assert len(d["annotations"]) == 1 and d["annotations"][0]["category_id"] == 0
        assert 0 < d["annotations"][0]["score"] <= 1
