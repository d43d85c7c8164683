"""Exact resume (cad.engine.resume, docs/resume.md): a training run killed after a checkpoint and
resumed with `--resume` ends with the weights of the uninterrupted run, bit for bit (CPU, fixed SEED).

Each trainer runs `tools/train_net.py` (forked, `conftest.run_tool`) uninterrupted, then killed by
SIGKILL at the end of an iteration that wrote no checkpoint (the work since the last checkpoint is
lost, as in a real kill), then resumed with `--resume`. Every tensor of the final model (students,
EMA teachers, stage flags, normalisation statistics) must be equal (`torch.equal`). The runs keep
every random draw on: flips and crops, copy-paste, GD's strong views, DIOD/xMOD clip starts, colour
and point augmentations, drop path, R-CNN's anchor/proposal sampling, Mask2Former's point sampling.
"""
import os
import shutil
import signal
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase

from cad.checkpoint import read_weights
from cad.data.paths import datasets_root
from cad.data.synthetic import SHAPES_MULTICLASS_METADATA, load_shapes_multiclass
from cad.engine.cli import train_argument_parser
from cad.engine.launch import launch
from conftest import REPO, TINY_CONFIG, TINY_OPTS, run_tool
from distributed_harness import load_records, record_runs

# 6 iterations, checkpoints after iterations 1, 3 and 5 (model_0000001, ...); the kill comes at the
# end of iteration 4, so the resumed run restarts from model_0000003 at iteration 4.
ITERS, PERIOD, KILL_AT, RESUMED_FROM = 6, 2, 4, 3
RUN = ["SEED", "0", "SOLVER.MAX_ITER", str(ITERS), "SOLVER.CHECKPOINT_PERIOD", str(PERIOD), "DATASETS.TEST", "()"]
# R-CNN on a 1-block ViT (drop path on) with a simple feature pyramid, 64 px images.
TINY_RCNN = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "MODEL.BACKBONE.NAME", "build_vit_sfp_backbone",
    "CAD.VIT.ARCH", "dino_vits16", "CAD.VIT.WEIGHTS", "random", "CAD.VIT.DEPTH", "1", "CAD.VIT.EMBED_DIM", "32",
    "CAD.VIT.NUM_HEADS", "2", "CAD.VIT.PYRAMID_OUT_CHANNELS", "32", "CAD.VIT.DROP_PATH_RATE", "0.1",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
]
RCNN = TINY_OPTS + RUN + TINY_RCNN
# CopyPasteTrainer (soft targets, DropLoss), copy-paste on every image.
CASCADE = TINY_OPTS + RUN + TINY_RCNN + [
    "DATASETS.TRAIN", "('synthetic_shapes_tiny_train_pseudo',)", "DATALOADER.COPY_PASTE_RATE", "1.0",
]
GD_DIR = REPO / "configs" / "GuidedDistillation"
# Mask2Former on a 1-block-per-stage Swin (drop path on), 64 px, 64 sampled points.
GD = RUN + [
    "MODEL.BACKBONE.NAME", "D2SwinTransformer", "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 1, 1, 1]",
    "MODEL.SWIN.NUM_HEADS", "[1, 1, 2, 2]", "MODEL.SWIN.DROP_PATH_RATE", "0.1", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10", "MODEL.MASK_FORMER.NHEADS", "2", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64", "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1",
    "DATASETS.TRAIN", "('resume_shapes_mc4',)",
]
# Stage 2: 1 labelled image, 4 unlabelled; the teacher (a random stage-1 model, CLASS_THRESH 0 so that
# it gives pseudo-labels) becomes the student at iteration 4 (the killed run's last), then its EMA.
GD_SSL = GD + [
    "DATASETS.TRAIN", "('resume_shapes_mc1',)", "SSL.DATASETS_UNLABELED", "('resume_shapes_mc4',)",
    "SSL.IMS_PER_BATCH_UNLABELED", "2", "SSL.BURNIN_ITER", "4", "SSL.EMA_DECAY", "0.5", "SSL.CLASS_THRESH", "0.0",
]
# DIOD/xMOD: random clips of the tiny train videos, crops, flips, colour (and xMOD's point) augmentations;
# the teachers start at iteration 4 (the killed run's last), then follow the students by EMA; BatchNorm
# encoder with Detectron2's PreciseBN every 2 iterations (its own loader, whose position is checkpointed).
MOTION = RUN + [
    "DATASETS.TRAIN", "('synthetic_motion_tiny_train',)", "SOLVER.IMS_PER_BATCH", "2",
    "CAD.MOTION.TEACHER_START_ITER", "4", "CAD.MOTION.EMA_KEEP_RATE", "0.5", "CAD.MOTION.ENCODER_NORM", "BN",
    "CAD.MOTION.INPUT_SIZE", "(32,64)", "CAD.MOTION.ENCODER_WIDTH", "4", "CAD.MOTION.SLOT_DIM", "8",
    "CAD.MOTION.MLP_HIDDEN", "8", "CAD.MOTION.DECODER_DIM", "4", "CAD.MOTION.NUM_SLOTS", "4",
    "CAD.MOTION.CROP_PROB", "0.5", "CAD.MOTION.FLIP_PROB", "0.5", "CAD.MOTION.COLOR_JITTER_PROB", "0.5",
    "CAD.MOTION.CONF_THRESH", "0.0", "CAD.MOTION.MIN_PSEUDO_AREA", "0", "CAD.NUM_THREADS", "1", "DATALOADER.NUM_WORKERS", "0",
    "TEST.PRECISE_BN.ENABLED", "True", "TEST.PRECISE_BN.NUM_ITER", "2", "TEST.EVAL_PERIOD", "2",
]
XMOD = MOTION + ["CAD.MOTION.POINT_DROP_PROB", "0.5", "CAD.MOTION.POINT_JITTER_PROB", "0.5"]
# name: (config, options, options of the killed run, options of the resumed run)
TRAINERS = {
    "rcnn": (TINY_CONFIG, RCNN, [], []),
    # the killed run's loader has 2 workers (copy-paste runs in them), the others none
    "copy_paste": (REPO / "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml", CASCADE,
                   ["DATALOADER.NUM_WORKERS", "2"], []),
    "gd_stage1": (GD_DIR / "mask2former_tiny_synthetic_teacher.yaml", GD, [], []),
    "gd_stage2": (GD_DIR / "mask2former_tiny_synthetic_student.yaml", GD_SSL, [], []),
    "diod": (REPO / "configs/DIOD/diod_synthetic.yaml", MOTION, [], []),
    "xmod": (REPO / "configs/xMOD/xmod_synthetic.yaml", XMOD, [], []),
}


class Signal(HookBase):
    """Send this process `signum` during iteration `iteration` (`during`) or at its end, after every
    other hook."""

    def __init__(self, signum: int, iteration: int, during: bool = False):
        self.signum, self.iteration, self.during = signum, iteration, during

    def _send(self, during: bool):
        if self.trainer.iter == self.iteration and during == self.during:
            os.kill(os.getpid(), self.signum)

    def before_step(self):
        self._send(True)

    def after_step(self):
        self._send(False)


def with_hook(hook: HookBase, usr2_handler=None):
    """A `run_tool(prepare=...)` that appends `hook` to the trainer's hooks in the forked run (and
    installs `usr2_handler` for SIGUSR2, as submitit does)."""
    def prepare():
        from cad.engine.trainer import CadTrainer

        build_hooks = CadTrainer.build_hooks
        CadTrainer.build_hooks = lambda self: build_hooks(self) + [hook]
        if usr2_handler is not None:
            signal.signal(signal.SIGUSR2, usr2_handler)

    return prepare


def _register_multiclass(name: str, count: int) -> str:
    """The first `count` images of synthetic_shapes_tiny_train with their 3 shape classes (registered
    in this process: the forked runs inherit it)."""
    if name not in DatasetCatalog.list():
        root = datasets_root()
        DatasetCatalog.register(name, lambda: load_shapes_multiclass(name, root, "synthetic_shapes_tiny_train")[:count])
        MetadataCatalog.get(name).set(evaluator_type="coco", **SHAPES_MULTICLASS_METADATA)
    return name


def train(options, out, *args, prepare=None, expect=0):
    """`tools/train_net.py --config-file CONFIG ARGS OPTIONS` (`options`: config and overrides) in
    `out`, forked; its log.txt and its standard error (where cad's warnings go)."""
    proc = run_tool("train_net.py", *args, "--config-file", *map(str, options), "OUTPUT_DIR", str(out), prepare=prepare)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return (Path(out) / "log.txt").read_text() + proc.stderr


def final_model(out):
    return read_weights(str(Path(out) / "model_final.pth"))["model"]


def differing(a, b):
    """Names of the tensors that differ between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def resume_from(checkpoint: Path, out: Path, edit=None) -> None:
    """`out` holding a copy of `checkpoint` as its last checkpoint (`edit(data)` applied to the copy)."""
    out.mkdir(parents=True, exist_ok=True)
    if edit is None:
        shutil.copy(checkpoint, out / checkpoint.name)
    else:
        data = read_weights(str(checkpoint))
        edit(data)
        torch.save(data, out / checkpoint.name)
    (out / "last_checkpoint").write_text(checkpoint.name)


@pytest.fixture(scope="module")
def options(tmp_path_factory):
    """name -> [config, overrides...] of the trainer's runs (stage 2's teacher made on first use)."""
    _register_multiclass("resume_shapes_mc1", 1)
    _register_multiclass("resume_shapes_mc4", 4)
    teacher = tmp_path_factory.mktemp("gd_teacher") / "teacher.pth"

    def get(name):
        config, opts, *_ = TRAINERS[name]
        if name == "gd_stage2":
            if not teacher.exists():
                save_random_model([TRAINERS["gd_stage1"][0], *TRAINERS["gd_stage1"][1]], teacher)
            opts = opts + ["SSL.TEACHER_CKPT", str(teacher)]
        return [config, *opts]

    return get


def save_random_model(options, path: Path) -> None:
    """The randomly initialised model of `options` ([config, overrides...]) saved as `path`."""
    from cad.engine.setup import build_cfg
    from cad.engine.trainer import TRAINER_REGISTRY

    torch.manual_seed(0)
    cfg = build_cfg(train_argument_parser().parse_args(["--config-file", *map(str, options)]))
    DetectionCheckpointer(TRAINER_REGISTRY.get(cfg.CAD.TRAINER).build_model(cfg), save_dir=str(path.parent)).save(path.stem)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, options):
    """name -> output folder of the trainer's uninterrupted run (run on first use)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    runs = {}

    def get(name):
        if name not in runs:
            train(options(name), root / name)
            runs[name] = root / name
        return runs[name]

    return get


@pytest.mark.parametrize("name", ["rcnn", "copy_paste", pytest.param("gd_stage1", marks=pytest.mark.slow), "gd_stage2",
                                  pytest.param("diod", marks=pytest.mark.slow), "xmod"])
def test_killed_then_resumed_ends_with_the_uninterrupted_weights(options, uninterrupted, tmp_path, name):
    """(gd_stage1 is gd_stage2's labelled half, diod is xmod without point augmentations: @slow.)"""
    _, _, killed_opts, resumed_opts = TRAINERS[name]
    out = tmp_path / "killed"
    train(options(name) + killed_opts, out, prepare=with_hook(Signal(signal.SIGKILL, KILL_AT)), expect=-signal.SIGKILL)
    assert (out / "last_checkpoint").read_text() == f"model_{RESUMED_FROM:07d}.pth"
    log = train(options(name) + resumed_opts, out, "--resume")
    assert f"Starting training from iteration {RESUMED_FROM + 1}" in log
    assert "--resume is not exact" not in log
    assert not differing(final_model(uninterrupted(name)), final_model(out))


def test_slurm_preemption_checkpoint_resumes_exactly(options, uninterrupted, tmp_path):
    """USR2 during iteration 2: PreemptionHook checkpoints at its end (model_0000002, not a periodic
    checkpoint) and hands over to submitit's handler, which requeues the job (here: the process
    dies); the requeued job (`--resume`) ends with the uninterrupted weights, even when given
    another SEED (the checkpoint's is used, and the log says so)."""
    def requeue(signum, frame):
        os.kill(os.getpid(), signal.SIGKILL)

    train(options("rcnn"), tmp_path, prepare=with_hook(Signal(signal.SIGUSR2, 2, during=True), requeue), expect=-signal.SIGKILL)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    log = train(options("rcnn") + ["SEED", "1"], tmp_path, "--resume")
    assert "Starting training from iteration 3" in log
    assert "SEED 1 is not used: the run goes on with its checkpoint's seed 0" in log
    assert not differing(final_model(uninterrupted("rcnn")), final_model(tmp_path))


def test_resume_without_the_data_position_differs_and_says_so(options, uninterrupted, tmp_path):
    """The comparison has teeth: the same checkpoint without its data state (loaders restarted at
    position 0, as cad's loaders did before) ends with other weights, and the log says why."""
    def drop_data(checkpoint):
        del checkpoint["trainer"]["data"]

    resume_from(uninterrupted("rcnn") / f"model_{RESUMED_FROM:07d}.pth", tmp_path, drop_data)
    log = train(options("rcnn"), tmp_path, "--resume")
    assert "the checkpoint holds no data position or seed" in log
    changed = differing(final_model(uninterrupted("rcnn")), final_model(tmp_path))
    assert len(changed) > 10, changed


def test_two_processes_resume_exactly_and_another_process_count_is_said(options, uninterrupted, tmp_path):
    """2 gloo processes (1 image each): a run resumed from the uninterrupted 2-process run's checkpoint
    ends with its weights on both ranks; resuming the 1-process run's checkpoint in 2 processes logs
    one line saying what is not exact. (One launch for the three jobs; SIGKILL is the 1-process tests'.)"""
    one_process = uninterrupted("rcnn") / f"model_{RESUMED_FROM:07d}.pth"

    def args(out, **extra):
        a = train_argument_parser().parse_args(["--config-file", *map(str, options("rcnn")), "OUTPUT_DIR", str(out)])
        a.__dict__.update(extra)
        return a

    straight, resumed, relaid = tmp_path / "straight", tmp_path / "resumed", tmp_path / "relaid"
    jobs = [(args(straight), straight / "records"),
            (args(resumed, resume=True, resume_from=straight / f"model_{RESUMED_FROM:07d}.pth"), resumed / "records"),
            (args(relaid, resume=True, resume_from=one_process), relaid / "records")]
    launch(record_runs, 2, args=(jobs,), timeout=timedelta(minutes=5))
    for a, b in zip(load_records(straight / "records", 2), load_records(resumed / "records", 2)):
        assert not differing(a["final"], b["final"])
    assert f"Starting training from iteration {RESUMED_FROM + 1}" in (resumed / "log.txt").read_text()
    for record in load_records(relaid / "records", 2):
        lines = [line for line in record["warnings"] if "--resume is not exact" in line]
        assert len(lines) == 1 and "1 process(es) when the checkpoint was written, 2 now" in lines[0], lines
        assert "1 process(es) x 2 images per batch then, 2 x 1 now" in lines[0]
