"""CuVLER's evaluation splits (registered under CuVLER's names) and VoteCut's --num-eig-vecs."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

import cad  # noqa: F401  (registers the predefined splits)
from cad.data.paths import DatasetMissingError, datasets_root
from cad.discovery.ncut import fiedler_vectors, ncut_eigenvectors
from cad.discovery import votecut as votecut_module

CUVLER_SPLITS = [
    "cls_agnostic_voc", "cls_agnostic_clipart", "cls_agnostic_watercolor", "cls_agnostic_comic",
    "cls_agnostic_openimages", "cls_agnostic_lvis", "cls_agnostic_imagenet_val", "votecut_imagenet_train",
]


def test_cuvler_splits_are_registered_with_their_layout():
    for name in CUVLER_SPLITS:
        assert MetadataCatalog.get(name).evaluator_type == "class_agnostic"
    assert MetadataCatalog.get("cls_agnostic_comic").gt_json_file.endswith("comic/annotations/traintest_comic_cls_agnostic.json")
    assert MetadataCatalog.get("cls_agnostic_voc").eval_tasks == ("bbox",)
    with pytest.raises(DatasetMissingError, match="openImages/validation.*section 'CuVLER evaluation splits'"):
        DatasetCatalog.get("cls_agnostic_openimages")
    root = datasets_root() / "watercolor"
    (root / "annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    gt = {
        "images": [{"id": 3, "file_name": "JPEGImages/163330523.jpg", "height": 40, "width": 60}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 7, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0}],
        "categories": [{"id": 7, "name": "fg"}],
    }
    (root / "annotations" / "traintest_watercolor_cls_agnostic.json").write_text(json.dumps(gt))
    (record,) = DatasetCatalog.get("cls_agnostic_watercolor")
    assert record["file_name"] == str(root / "JPEGImages" / "163330523.jpg")
    assert record["annotations"][0]["category_id"] == 0 and record["annotations"][0]["bbox"] == [1, 2, 10, 20]


def test_ncut_eigenvectors_are_cuvlers():
    """CuVLER votecut/ncut.py: L2-normalised features, A = (cos > 0.15) else 1e-5 (diagonal kept),
    L = D^-1/2 (D - A) D^-1/2, eigh, eigenvectors [1 : eig_vecs + 1] (each up to its sign)."""
    feats = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = torch.nn.functional.normalize(feats, dim=-1)
    adj = f @ f.transpose(1, 2) > 0.15
    adj = torch.where(~adj, 1e-5, adj.double())
    d = adj.sum(2)
    lap = torch.diag_embed(d.rsqrt()) @ (torch.diag_embed(d) - adj) @ torch.diag_embed(d.rsqrt())
    values, vectors = torch.linalg.eigh(lap)
    assert (values[:, 1:5].diff(dim=1) > 1e-6).all()  # distinct eigenvalues: the vectors are unique up to sign
    ours = ncut_eigenvectors(feats, 3)
    assert ours.shape == (2, 3, 30)
    dots = torch.einsum("bkn,bnk->bk", ours, vectors[:, :, 1:4])
    torch.testing.assert_close(dots.abs(), torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(ours[:, 0], fiedler_vectors(feats, generalized=False, solver="eigh"))


def test_votecut_clusters_every_eigenvector_model_by_model(monkeypatch):
    seen = {}

    def fake_masks(vectors, image, *args, **kwargs):
        seen["vectors"] = vectors
        return []

    monkeypatch.setattr(votecut_module, "votecut_masks", fake_masks)
    method = votecut_module.VoteCut(SimpleNamespace(models=(("dino_vits16", None), ("dino_vits8", None)), device="cpu"), num_eig_vecs=2)
    a, b = np.random.default_rng(0).normal(size=(2, 2, 3, 4))
    image = SimpleNamespace(image=np.zeros((8, 8, 3), np.uint8))
    method.stage2(image, {"eigvec_0": a, "eigvec_1": b})
    assert [v.tolist() for v in seen["vectors"]] == [a[0].tolist(), a[1].tolist(), b[0].tolist(), b[1].tolist()]
    with pytest.raises(ValueError, match="num_eig_vecs"):
        votecut_module.VoteCut(SimpleNamespace(models=(), device="cpu"), num_eig_vecs=0)


def test_votecut_stage1_stores_the_eigenvectors_per_model(tmp_path, capsys):
    from cad.backbones.vit import save_random_checkpoint
    from cad.discovery.cli import run
    from cad.discovery.method import DiscoveryImage

    small = dict(depth=1, embed_dim=48, num_heads=2)
    path = save_random_checkpoint("dino_vits16", tmp_path / "vit.pth", **small)
    options = SimpleNamespace(models=(("dino_vits16", str(path)),), device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    one = votecut_module.VoteCut(options, resolution=64, **small).stage1([DiscoveryImage(1, "a", image)])[0]
    two = votecut_module.VoteCut(options, resolution=64, num_eig_vecs=2, **small).stage1([DiscoveryImage(1, "a", image)])[0]
    assert one["eigvec_0"].shape == (4, 4) and two["eigvec_0"].shape == (2, 4, 4)
    np.testing.assert_allclose(two["eigvec_0"][0], one["eigvec_0"], atol=1e-8)
    assert run(["lost", "--images", str(tmp_path), "--out", str(tmp_path / "o.json"), "--num-eig-vecs", "2"]) == 2
    assert "--num-eig-vecs is a VoteCut option" in capsys.readouterr().err
