"""Seeded labeled/unlabeled splits: exact partition, reproducible, cached, any percentage."""
import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.data.ssl_splits import load_split_ids, partition_ids, register_by_name, split_file, split_name


def test_partition_counts_and_reproducibility():
    ids = list(range(1000, 0, -1))
    for pct, expected in [(0.4, 4), (1, 10), (2.5, 25), (10, 100), (50, 500), (100, 1000)]:
        lab, unl = partition_ids(ids, pct, seed=0)
        assert len(lab) == expected  # floor(P*N/100), as the reference
        assert sorted(lab + unl) == sorted(ids) and not set(lab) & set(unl)
        assert (lab, unl) == partition_ids(list(reversed(ids)), pct, seed=0)  # order-independent
    assert partition_ids(ids, 10, seed=0)[0] != partition_ids(ids, 10, seed=1)[0]
    # 2.5% is not truncated to 2% (a reference bug)
    assert len(partition_ids(ids, 2.5, 0)[0]) != len(partition_ids(ids, 2, 0)[0])
    with pytest.raises(ValueError):
        partition_ids(ids, 0, 0)


def test_registered_by_name_cached_and_partitioned(tmp_path):
    base = "gd_test_base_split"
    if base not in DatasetCatalog.list():
        DatasetCatalog.register(base, lambda: [{"image_id": i, "file_name": f"{i}.png"} for i in range(50)])
        MetadataCatalog.get(base).set(thing_classes=["a", "b"], evaluator_type="coco")
    name = split_name(base, 7.5, 3, "labeled")
    assert name == "gd_test_base_split_7.5pct_seed3_labeled"
    assert register_by_name(name, tmp_path) == base
    assert register_by_name("not_an_ssl_split", tmp_path) is None
    lab = DatasetCatalog.get(name)
    unl = DatasetCatalog.get(split_name(base, 7.5, 3, "unlabeled"))
    assert len(lab) == 3 and len(unl) == 47
    assert sorted(d["image_id"] for d in lab + unl) == list(range(50))
    assert MetadataCatalog.get(name).thing_classes == ["a", "b"]
    cached = json.loads(split_file(tmp_path, base, 7.5, 3).read_text())
    assert cached["labeled"] == sorted(d["image_id"] for d in lab)
    assert load_split_ids(base, 7.5, 3, tmp_path) == cached  # read back from the cache


def test_standard_names_registered():
    names = DatasetCatalog.list()
    for pct in ("0.4", "1", "2", "5", "10", "20", "30", "50"):
        assert f"coco_2017_train_{pct}pct_seed0_labeled" in names
        assert f"synthetic_shapes_multiclass_train_{pct}pct_seed0_unlabeled" in names
