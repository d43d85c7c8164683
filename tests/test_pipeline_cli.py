"""tools/discover.py: local runs, --dataset with metrics, SLURM arrays (submitit debug executor), bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cad.data.coco import register_class_agnostic_coco
from cad.discovery.cli import run

from pipeline_fakes import GridMethod, make_images

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SIZES = [(40, 60), (64, 48), (30, 30), (50, 70), (45, 45)]


@pytest.fixture
def image_dir(tmp_path):
    GridMethod.fail_on.update({"1": None, "2": None, "exit": None})
    make_images(tmp_path / "images", SIZES, corrupt={"img_001.png"})
    return tmp_path / "images"


def _discover(tmp_path, image_dir, name, *extra):
    out = tmp_path / f"{name}.json"
    assert run(["test_grid", "--images", str(image_dir), "--out", str(out), "--chunk-size", "2", *extra]) == 0
    return json.loads(out.read_text())


def test_local_run_reports_unreadable(tmp_path, image_dir, capsys):
    coco = _discover(tmp_path, image_dir, "local")
    printed = capsys.readouterr().out
    assert "4 images, 4 annotations, 1 unreadable images skipped" in printed
    assert "unreadable: img_001.png" in printed
    assert [im["file_name"] for im in coco["images"]] == ["img_000.png", "img_002.png", "img_003.png", "img_004.png"]
    assert (tmp_path / "local_work" / "manifest.json").exists()


def test_slurm_arrays_with_debug_executor_match_local_run(tmp_path, image_dir, capsys):
    local = _discover(tmp_path, image_dir, "local")
    arrays = _discover(tmp_path, image_dir, "arrays", "--slurm", "--slurm-cluster", "debug", "--shards", "2",
                       "--job-dir", str(tmp_path / "jobs"), "--workers", "1")
    assert "job arrays finished (2 shards)" in capsys.readouterr().out
    assert arrays == local


def test_stages_run_separately_per_shard(tmp_path, image_dir, capsys):
    local = _discover(tmp_path, image_dir, "local")
    out, work = tmp_path / "split.json", tmp_path / "w"
    base = ["test_grid", "--images", str(image_dir), "--out", str(out), "--chunk-size", "2", "--work-dir", str(work)]
    for stage in ("1", "2"):
        for shard in ("0/2", "1/2"):
            assert run(base + ["--stage", stage, "--shard", shard]) == 0
    assert not out.exists() and "run with --stage merge" in capsys.readouterr().out
    assert run(base + ["--stage", "merge"]) == 0
    assert json.loads(out.read_text()) == local


def test_dataset_source_prints_class_agnostic_ap(tmp_path, image_dir, capsys):
    # ground truth = exactly what the fake method predicts, so AP must be 100
    pred = _discover(tmp_path, image_dir, "pred")
    gt = {"images": [{**im, "id": im["id"] * 10} for im in pred["images"]],
          "annotations": [{**a, "image_id": a["image_id"] * 10, "category_id": 5} for a in pred["annotations"]],
          "categories": [{"id": 5, "name": "thing"}]}
    gt["images"].append({"id": 999, "file_name": "img_001.png", "width": 60, "height": 64})  # the corrupt one
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    register_class_agnostic_coco("test_pipeline_tiny", tmp_path / "gt.json", image_dir, "test")
    out = tmp_path / "ds.json"
    assert run(["test_grid", "--dataset", "test_pipeline_tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "class-agnostic bbox: AP=100.00" in printed and "class-agnostic segm: AP=100.00" in printed
    coco = json.loads(out.read_text())
    assert sorted(im["id"] for im in coco["images"]) == [10, 30, 40, 50]  # the split's own ids


@pytest.mark.parametrize(
    "argv, message",
    [
        (["test_grid", "--images", "/nonexistent/dir", "--out", "x.json"], "is not a directory"),
        (["nosuchmethod", "--images", ".", "--out", "x.json"], "unknown discovery method 'nosuchmethod'"),
        (["test_grid", "--images", ".", "--out", "x.json", "--shard", "3/2"], "--shard 3/2"),
        (["test_grid", "--images", ".", "--out", "x.json", "--shard", "a"], "--shard must be I/N"),
        (["test_grid", "--images", ".", "--out", "x.json", "--weights", "w.pth"], "--weights needs --arch"),
        (["test_grid", "--dataset", "no_such_split", "--out", "x.json"], "dataset 'no_such_split' is not registered"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


def test_tool_help_and_error_exit(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "", "DETECTRON2_DATASETS": str(tmp_path)}
    tool = str(ROOT / "tools/discover.py")
    res = subprocess.run([sys.executable, tool, "--help"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "--shard" in res.stdout and "--slurm" in res.stdout
    res = subprocess.run([sys.executable, tool, "lost", "--images", str(tmp_path / "missing"), "--out", "o.json"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "error:" in res.stderr
