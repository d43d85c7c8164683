"""tools/discover.py maskcut / votecut end to end with a random-init ViT-S/16 in the official layout."""
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

import cad.discovery.votecut as votecut
from cad.backbones.vit import save_random_checkpoint
from cad.discovery.cli import run
from cad.utils.masks import decode_mask

from pipeline_fakes import make_images

torch.set_num_threads(1)
SIZES = [(60, 90), (72, 40), (50, 50)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_checkpoint("dino_vits16", tmp_path_factory.mktemp("ckpt") / "dino_deitsmall16_pretrain.pth")


def _check_schema(coco):
    sizes = {f"img_{i:03d}.png": hw for i, hw in enumerate(SIZES)}
    by_id = {im["id"]: im for im in coco["images"]}
    for im in coco["images"]:
        assert (im["height"], im["width"]) == sizes[im["file_name"]]
    for ann in coco["annotations"]:
        im = by_id[ann["image_id"]]
        mask = decode_mask(ann["segmentation"])
        assert mask.shape == (im["height"], im["width"]) and mask.any()
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        assert ann["bbox"] == pytest.approx(mask_util.toBbox(rle).tolist())
        assert ann["area"] == mask.sum() and ann["category_id"] == 1 and 0 < ann["score"] <= 1


def test_maskcut_workers_1_and_2_agree(tmp_path, checkpoint, capsys):
    make_images(tmp_path / "images", SIZES, corrupt={"img_001.png"})
    common = ["maskcut", "--images", str(tmp_path / "images"), "--arch", "dino_vits16", "--weights", str(checkpoint),
              "--device", "cpu", "--chunk-size", "1"]
    assert run(common + ["--out", str(tmp_path / "w1.json")]) == 0
    assert "1 unreadable images skipped" in capsys.readouterr().out
    assert run(common + ["--out", str(tmp_path / "w2.json"), "--workers", "2"]) == 0
    w1, w2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("w1", "w2"))
    assert w1 == w2 and len(w1["images"]) == 2 and w1["annotations"]
    assert all(a["score"] == 1.0 for a in w1["annotations"])  # MaskCut has no score
    _check_schema(w1)


def test_votecut_shards_merge_to_single_run(tmp_path, checkpoint):
    make_images(tmp_path / "images", SIZES[:2])
    models = f"dino_vits16={checkpoint},dino_vits16={checkpoint}"
    common = ["votecut", "--images", str(tmp_path / "images"), "--models", models, "--device", "cpu",
              "--chunk-size", "1", "--no-crf"]
    assert run(common + ["--out", str(tmp_path / "one.json")]) == 0
    for shard in ("0/2", "1/2"):
        assert run(common + ["--out", str(tmp_path / "two.json"), "--shard", shard]) == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one == two and one["annotations"]
    _check_schema(one)
    assert max(a["score"] for a in one["annotations"]) == 1.0  # cluster size / largest cluster size
    arrays = np.load(tmp_path / "one_work" / "stage1" / "chunk_000000.npz")
    assert sorted(k for k in arrays.files if not k.startswith("__")) == ["0/eigvec_0", "0/eigvec_1"]


def test_votecut_crf_failures_are_counted_and_reported(tmp_path, checkpoint, capsys, monkeypatch):
    """A CRF that raises keeps the unrefined mask (CuVLER) and is counted in the summary and the JSON."""

    def broken_crf(image, mask):
        raise RuntimeError("forced CRF failure")

    monkeypatch.setattr(votecut, "dense_crf", broken_crf)
    make_images(tmp_path / "images", SIZES[:2])
    out = tmp_path / "vc.json"
    assert run(["votecut", "--images", str(tmp_path / "images"), "--models", f"dino_vits16={checkpoint}",
                "--device", "cpu", "--chunk-size", "1", "--out", str(out)]) == 0
    coco = json.loads(out.read_text())
    n = len(coco["annotations"])
    assert n >= 2  # at least one mask per image, every one of them through the broken CRF
    assert coco["info"] == {"num_images": 2, "num_annotations": n, "unreadable_images": 0, "crf_failures": n}
    assert f"{n} masks kept unrefined after a CRF error" in capsys.readouterr().out
