"""Exact resume (cad.engine.resume): a training run killed after a checkpoint and resumed with
`--resume` ends with the weights of the uninterrupted run, bit for bit (CPU, fixed SEED).

Each trainer runs `tools/train_net.py` three times (forked, `conftest.run_tool`): uninterrupted;
SIGKILLed at the end of an iteration that wrote no checkpoint (so the work since the last one is
lost, as in a real kill); resumed with `--resume`. Every tensor of the final model (students, EMA
teachers, stage flags, BatchNorm statistics) must be equal (`torch.equal`).
"""
import os
import signal

import pytest
import torch
from detectron2.engine import HookBase

from cad.checkpoint import read_weights
from conftest import TINY_CONFIG, TINY_OPTS, run_tool

# 6 iterations, checkpoints after iterations 1, 3 and 5 (model_0000001, ...); the kill comes at the
# end of iteration 4, so the resumed run restarts from model_0000003 at iteration 4.
ITERS, PERIOD, KILL_AT, RESUMED_FROM = 6, 2, 4, 3
RUN = ["SEED", "0", "SOLVER.MAX_ITER", str(ITERS), "SOLVER.CHECKPOINT_PERIOD", str(PERIOD), "DATASETS.TEST", "()"]
# R-CNN on a 1-block ViT (drop path on: a draw of the training step) with a simple feature pyramid, 64 px.
RCNN = TINY_OPTS + RUN + [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "MODEL.BACKBONE.NAME", "build_vit_sfp_backbone",
    "CAD.VIT.ARCH", "dino_vits16", "CAD.VIT.WEIGHTS", "random", "CAD.VIT.DEPTH", "1", "CAD.VIT.EMBED_DIM", "32",
    "CAD.VIT.NUM_HEADS", "2", "CAD.VIT.PYRAMID_OUT_CHANNELS", "32", "CAD.VIT.DROP_PATH_RATE", "0.1",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
]


class Sigkill(HookBase):
    """SIGKILL this process at the end of iteration `iteration` (after every other hook)."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)


def with_hook(hook: HookBase):
    """A `run_tool(prepare=...)` that appends `hook` to every trainer's hooks in the forked run."""
    def prepare():
        from cad.engine.trainer import CadTrainer

        build_hooks = CadTrainer.build_hooks
        CadTrainer.build_hooks = lambda self: build_hooks(self) + [hook]

    return prepare


def train(config, opts, out, *args, prepare=None):
    proc = run_tool("train_net.py", "--config-file", str(config), *args, *opts, "OUTPUT_DIR", str(out), prepare=prepare)
    return proc


def final_model(out):
    return read_weights(str(out / "model_final.pth"))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)}/{len(a)} tensors differ, e.g. {different[:3]}"


def killed_and_resumed(config, opts, out, resume_opts=()):
    """Train `config` killed (SIGKILL) at the end of iteration KILL_AT, then resumed; returns the log."""
    killed = train(config, opts, out, prepare=with_hook(Sigkill(KILL_AT)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "last_checkpoint").read_text() == f"model_{RESUMED_FROM:07d}.pth"
    resumed = train(config, [*opts, *resume_opts], out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert f"Starting training from iteration {RESUMED_FROM + 1}" in log
    return log


@pytest.mark.parametrize("name,config,opts", [("rcnn", TINY_CONFIG, RCNN)])
def test_killed_then_resumed_ends_with_the_uninterrupted_weights(tmp_path, name, config, opts):
    straight = train(config, opts, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed_and_resumed(config, opts, tmp_path / "killed")
    assert_same_weights(final_model(tmp_path / "straight"), final_model(tmp_path / "killed"))
