"""tools/discover.py lost end to end: random-init ViT-S/16 in the official layout, tiny images."""
import json

import pytest
import torch

from cad.backbones.vit import save_random_checkpoint
from cad.discovery.cli import run
from cad.discovery.lost import LOST
from cad.discovery.method import MethodOptions
from cad.discovery.sources import list_image_dir, read_rgb

from pipeline_fakes import make_images

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_checkpoint("dino_vits16", tmp_path_factory.mktemp("ckpt") / "dino_deitsmall16_pretrain.pth")


def test_lost_cli_matches_method_and_resumes(tmp_path, checkpoint, capsys):
    make_images(tmp_path / "images", [(64, 96), (80, 48), (50, 70)], corrupt={"img_002.png"})
    out = tmp_path / "lost.json"
    argv = ["lost", "--images", str(tmp_path / "images"), "--out", str(out), "--arch", "dino_vits16",
            "--weights", str(checkpoint), "--device", "cpu", "--chunk-size", "1"]
    assert run(argv) == 0
    assert "2 images, 2 annotations, 1 unreadable images skipped" in capsys.readouterr().out
    coco = json.loads(out.read_text())
    method = LOST(MethodOptions(models=(("dino_vits16", str(checkpoint)),)))
    for im, ann, record in zip(coco["images"], coco["annotations"], list_image_dir(tmp_path / "images")):
        image = read_rgb(record.path)
        assert (im["height"], im["width"]) == image.shape[:2]
        ((obj,),) = method.discover([image])
        x0, y0, x1, y1 = obj.box
        assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
        assert x1 <= im["width"] and y1 <= im["height"] and "segmentation" not in ann
    # a second run reuses every chunk and writes the same JSON
    (tmp_path / "lost_work" / "stage2" / "chunk_000001.json").unlink()
    assert run(argv) == 0
    assert json.loads(out.read_text()) == coco


@pytest.mark.parametrize(
    "models, message",
    [
        (["--arch", "dino_vits16", "--weights", "/nonexistent.pth"], "weights file '/nonexistent.pth' (dino_vits16) does not exist"),
        (["--arch", "vit_huge"], "unknown ViT architecture 'vit_huge'"),
    ],
)
def test_lost_bad_weights_is_one_line(tmp_path, models, message, capsys):
    make_images(tmp_path / "images", [(32, 32)])
    assert run(["lost", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "o.json"), *models]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_lost_weights_that_are_not_a_checkpoint_is_one_line(tmp_path, capsys):
    make_images(tmp_path / "images", [(32, 32)])
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    argv = ["lost", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "o.json"),
            "--arch", "dino_vits16", "--weights", str(tmp_path / "notes.pth")]
    assert run(argv) == 2
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot read '{tmp_path / 'notes.pth'}' as a checkpoint (")
    assert not (tmp_path / "o.json").exists()


def test_lost_on_a_split_prints_corloc(tmp_path, checkpoint, capsys):
    from cad.data.coco import register_class_agnostic_coco

    make_images(tmp_path / "images", [(64, 96), (80, 48), (50, 70)], corrupt={"img_002.png"})
    common = ["--arch", "dino_vits16", "--weights", str(checkpoint), "--device", "cpu"]
    assert run(["lost", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "p.json"), *common]) == 0
    pred = json.loads((tmp_path / "p.json").read_text())
    x, y, w, h = pred["annotations"][0]["bbox"]
    # image 1: GT = LOST's box (hit); image 2: a 2x2 corner box (miss); image 3: unreadable (miss)
    boxes = [[x, y, w, h], [0, 0, 2, 2], [0, 0, 10, 10]]
    gt = {"images": [{"id": i + 1, "file_name": f"img_00{i}.png", "height": hh, "width": ww}
                     for i, (hh, ww) in enumerate([(64, 96), (80, 48), (50, 70)])],
          "annotations": [{"id": i + 1, "image_id": i + 1, "bbox": b, "category_id": 1, "iscrowd": 0, "area": b[2] * b[3]}
                          for i, b in enumerate(boxes)],
          "categories": [{"id": 1, "name": "object"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    register_class_agnostic_coco("test_pipeline_lost_tiny", tmp_path / "gt.json", tmp_path / "images", "test")
    capsys.readouterr()
    assert run(["lost", "--dataset", "test_pipeline_lost_tiny", "--out", str(tmp_path / "d.json"), *common]) == 0
    assert "lost on test_pipeline_lost_tiny: CorLoc=33.33" in capsys.readouterr().out


@pytest.mark.slow
def test_lost_slurm_arrays_with_local_executor(tmp_path, checkpoint, capsys):
    """The same arrays as the (default-suite) debug-executor test, but each task in its own process."""
    make_images(tmp_path / "images", [(64, 96), (80, 48), (50, 70)])
    common = ["lost", "--images", str(tmp_path / "images"), "--arch", "dino_vits16", "--weights", str(checkpoint),
              "--device", "cpu", "--chunk-size", "1"]
    assert run(common + ["--out", str(tmp_path / "one.json")]) == 0
    assert run(common + ["--out", str(tmp_path / "arrays.json"), "--slurm", "--slurm-cluster", "local",
                         "--shards", "2", "--job-dir", str(tmp_path / "jobs"), "--timeout", "10"]) == 0
    assert "job arrays finished (2 shards)" in capsys.readouterr().out
    assert json.loads((tmp_path / "arrays.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
