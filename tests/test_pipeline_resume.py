"""Pipeline: resumption after a kill, sharding, corrupt images, JSON schema, workers."""
import json
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import torch

from cad.utils.masks import decode_mask
from cad.discovery.method import MethodOptions
from cad.discovery.pipeline import PipelineConfig, WorkDirError, merge, run_pipeline, run_stage1, run_stage2
from cad.discovery.sources import list_image_dir

from pipeline_fakes import GridMethod, make_images

torch.set_num_threads(1)

SIZES = [(40, 60), (64, 48), (30, 30), (50, 70), (45, 45), (33, 57), (60, 40)]


@pytest.fixture
def images(tmp_path):
    make_images(tmp_path / "images", SIZES, corrupt={"img_003.png"})
    return list_image_dir(tmp_path / "images")


@pytest.fixture(autouse=True)
def reset_fake():
    GridMethod.stage1_calls.clear()
    GridMethod.fail_on.update({"1": None, "2": None, "exit": None})


def _cfg(tmp_path, name, **kw):
    kw.setdefault("chunk_size", 2)
    kw.setdefault("batch_size", 3)
    return PipelineConfig("test_grid", MethodOptions(), tmp_path / name, **kw)


def _reference(tmp_path, images):
    out = tmp_path / "ref.json"
    summary = run_pipeline(_cfg(tmp_path, "ref"), images, out)
    return json.loads(out.read_text()), summary


def test_schema_and_corrupt_image(tmp_path, images):
    coco, summary = _reference(tmp_path, images)
    assert [u["file_name"] for u in summary.unreadable] == ["img_003.png"]
    assert summary.num_images == len(SIZES) - 1
    assert coco["categories"] == [{"id": 1, "name": "object"}]
    sizes = {f"img_{i:03d}.png": hw for i, hw in enumerate(SIZES)}
    assert [im["file_name"] for im in coco["images"]] == [f"img_{i:03d}.png" for i in range(7) if i != 3]
    for im in coco["images"]:  # width = columns, height = rows, never swapped
        assert (im["height"], im["width"]) == sizes[im["file_name"]]
    by_id = {im["id"]: im for im in coco["images"]}
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    assert len(coco["annotations"]) == len(coco["images"])
    for ann in coco["annotations"]:
        im = by_id[ann["image_id"]]
        mask = decode_mask(ann["segmentation"])
        assert mask.shape == (im["height"], im["width"])
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["area"] == mask.sum()
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0 and 0 < ann["score"] <= 1


def test_resume_after_kill_in_stage2(tmp_path, images):
    reference, _ = _reference(tmp_path, images)
    cfg = _cfg(tmp_path, "work")
    GridMethod.fail_on["2"] = "img_005.png"  # chunk 2 (images 4, 5)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, images, tmp_path / "out.json")
    done = sorted(p.name for p in (cfg.work_dir / "stage2").glob("*.json"))
    assert done == ["chunk_000000.json", "chunk_000001.json"]
    assert not (tmp_path / "out.json").exists()
    GridMethod.fail_on["2"] = None
    GridMethod.stage1_calls.clear()
    run_pipeline(cfg, images, tmp_path / "out.json")
    assert GridMethod.stage1_calls == []  # stage 1 was complete and is not rerun
    assert json.loads((tmp_path / "out.json").read_text()) == reference


def test_resume_after_a_worker_process_is_killed(tmp_path, images):
    reference, _ = _reference(tmp_path, images)
    cfg = _cfg(tmp_path, "work", workers=2)
    GridMethod.fail_on["exit"] = "img_006.png"  # the last chunk; the worker dies there
    with pytest.raises(BrokenProcessPool):
        run_pipeline(cfg, images, tmp_path / "out.json")
    assert not (cfg.work_dir / "stage2" / "chunk_000003.json").exists()
    GridMethod.fail_on["exit"] = None
    run_pipeline(cfg, images, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == reference


def test_resume_after_kill_in_stage1_and_lost_chunk(tmp_path, images):
    reference, _ = _reference(tmp_path, images)
    cfg = _cfg(tmp_path, "work")
    GridMethod.fail_on["1"] = "img_004.png"
    with pytest.raises(KeyboardInterrupt):
        run_stage1(cfg, images)
    assert sorted(p.name for p in (cfg.work_dir / "stage1").glob("*")) == ["chunk_000000.npz", "chunk_000001.npz"]
    GridMethod.fail_on["1"] = None
    (cfg.work_dir / "stage1" / "chunk_000000.npz").unlink()  # a lost chunk is recomputed too
    GridMethod.stage1_calls.clear()
    run_pipeline(cfg, images, tmp_path / "out.json")
    # chunk 0 and chunks 2.. are computed; chunk 1 (img_002, corrupt img_003) is reused
    assert GridMethod.stage1_calls == ["img_000.png", "img_001.png", "img_004.png", "img_005.png", "img_006.png"]
    assert json.loads((tmp_path / "out.json").read_text()) == reference


def test_shards_merge_to_single_run(tmp_path, images):
    reference, _ = _reference(tmp_path, images)
    out = tmp_path / "sharded.json"
    for shard in range(3):
        cfg = _cfg(tmp_path, "sharded", shard=shard, num_shards=3)
        assert (run_pipeline(cfg, images, out) is None) == (shard < 2)  # the last shard merges
    assert json.loads(out.read_text()) == reference


def test_stage_order_and_mismatch_errors(tmp_path, images):
    cfg = _cfg(tmp_path, "work")
    with pytest.raises(WorkDirError, match="stage 1 output missing"):
        run_stage2(cfg, images)
    run_stage1(_cfg(tmp_path, "work", shard=0, num_shards=2), images)
    with pytest.raises(WorkDirError, match="cannot merge"):
        merge(cfg, images, tmp_path / "out.json")
    with pytest.raises(WorkDirError, match="chunk_size"):
        run_stage1(_cfg(tmp_path, "work", chunk_size=3), images)


def test_two_workers_and_boxes_only(tmp_path, images):
    reference, _ = _reference(tmp_path, images)
    cfg = _cfg(tmp_path, "w2", workers=2)
    run_pipeline(cfg, images, tmp_path / "w2.json")
    assert json.loads((tmp_path / "w2.json").read_text()) == reference
    boxes = PipelineConfig("test_grid", MethodOptions(crf=False), tmp_path / "boxes", chunk_size=4)
    run_pipeline(boxes, images, tmp_path / "boxes.json")
    coco = json.loads((tmp_path / "boxes.json").read_text())
    assert [a["bbox"] for a in coco["annotations"]] == [a["bbox"] for a in reference["annotations"]]
    assert all("segmentation" not in a and a["area"] == a["bbox"][2] * a["bbox"][3] for a in coco["annotations"])
