"""Two iterations of each Guided Distillation stage through tools/train_net.py (tiny config),
resume of stage 2 (teacher + student + iteration), and --eval-only of the EMA teacher."""
import json
from collections import Counter
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "configs" / "GuidedDistillation"
TINY = [
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "SOLVER.IMS_PER_BATCH", "2", "SSL.IMS_PER_BATCH_UNLABELED", "2",
    "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1", "TEST.EVAL_PERIOD", "0",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
]


def _train_net(args, data_root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train_net.py"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_stages_resume_and_eval(tmp_path):
    data = tmp_path / "data"
    t_out, s_out = tmp_path / "teacher", tmp_path / "student"
    _train_net(["--config-file", str(CFG / "mask2former_tiny_synthetic_teacher.yaml"), *TINY,
                "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", str(t_out)], data)
    stage1 = torch.load(t_out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("sem_seg_head.predictor.") for k in stage1)

    student_cfg = ["--config-file", str(CFG / "mask2former_tiny_synthetic_student.yaml")]
    student_opts = [*TINY,
                    "SSL.TEACHER_CKPT", str(t_out / "model_final.pth"), "SSL.BURNIN_ITER", "1",
                    "DATASETS.TEST", "()", "OUTPUT_DIR", str(s_out)]
    proc = _train_net([*student_cfg, *student_opts, "SOLVER.MAX_ITER", "2"], data)
    # the student's MODEL.WEIGHTS is "" in the tiny config: random initialisation, said so
    assert "MODEL.WEIGHTS is empty: Mask2Former starts from random initialisation" in proc.stdout
    ckpt = torch.load(s_out / "model_final.pth", map_location="cpu", weights_only=False)
    keys = ckpt["model"].keys()
    # the official EnsembleTSModel names: official and cad stage-2 files interchange
    assert {k.split(".", 1)[0] for k in keys} == {"modelTeacher", "modelStudent"}
    assert ckpt["iteration"] == 1 and "optimizer" in ckpt["trainer"]["_trainer"]
    assert "LRScheduler" in ckpt["trainer"]["hooks"]
    # iteration 1 == BURNIN_ITER copied the student into the teacher, so the teacher is no
    # longer the stage-1 model
    w = "sem_seg_head.predictor.class_embed.weight"
    assert not torch.equal(ckpt["model"]["modelTeacher." + w], stage1[w])

    _train_net([*student_cfg, "--resume", *student_opts, "SOLVER.MAX_ITER", "3"], data)
    resumed = torch.load(s_out / "model_final.pth", map_location="cpu", weights_only=False)
    assert resumed["iteration"] == 2  # continued from the checkpoint, not from 0

    _train_net([*student_cfg, "--eval-only", *TINY,
                "MODEL.WEIGHTS", str(s_out / "model_final.pth"), "SSL.EVAL_WHO", "teacher",
                "OUTPUT_DIR", str(tmp_path / "eval")], data)
    # the teacher's 20 detections per image on the 100 val images, in the split's 3 categories
    # (the values of the evaluation: tests/test_learning.py::test_guided_distillation_*)
    predictions = json.loads((tmp_path / "eval" / "inference" / "synthetic_shapes_multiclass_val" /
                              "coco_instances_results.json").read_text())
    per_image = Counter(p["image_id"] for p in predictions)
    assert len(per_image) == 100 and max(per_image.values()) <= 20 and {p["category_id"] for p in predictions} <= {1, 2, 3}


def test_stage2_without_teacher_checkpoint_is_one_error_line(tmp_path, capsys):
    from cad.engine.cli import run

    student = ["--config-file", str(CFG / "mask2former_tiny_synthetic_student.yaml"), "OUTPUT_DIR", str(tmp_path)]
    missing = tmp_path / "teacher" / "model_final.pth"
    for value, expected in (("", "error: SSL.TEACHER_CKPT is empty"), (str(missing), f"error: SSL.TEACHER_CKPT '{missing}' not found")):
        assert run([*student, "SSL.TEACHER_CKPT", value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(expected) and "\n" not in err, err
