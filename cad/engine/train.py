"""What `tools/train_net.py` runs in each process: train, or evaluate with `--eval-only`."""
import argparse
import itertools
import logging
import os

import torch
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from cad.engine.setup import build_cfg
from cad.engine.trainer import TRAINER_REGISTRY
from cad.utils.visualize import render_predictions

logger = logging.getLogger("cad")


def setup(args: argparse.Namespace):
    """Frozen config for this process, with Detectron2's logging/output-dir setup; cad's loggers
    ("cad.*") get the same handlers as Detectron2's (console on the main process, OUTPUT_DIR/log.txt),
    as Mask2Former's `setup` does for its own package."""
    cfg = build_cfg(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cad")
    if cfg.CAD.NUM_THREADS > 0:
        torch.set_num_threads(cfg.CAD.NUM_THREADS)
    return cfg


def main(args: argparse.Namespace):
    """Train (resuming with `--resume`) or evaluate (`--eval-only`); returns the metrics dict."""
    cfg = setup(args)
    trainer_cls = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)
    if args.eval_only:
        results = trainer_cls.evaluate(cfg, resume=args.resume)
        if comm.is_main_process() and cfg.CAD.VIS_NUM_IMAGES > 0:
            for subfolder, name in itertools.product(trainer_cls.eval_subfolders(cfg), cfg.DATASETS.TEST):
                folder = os.path.join(cfg.OUTPUT_DIR, "inference", subfolder, name)
                render_predictions(
                    name,
                    os.path.join(folder, "coco_instances_results.json"),
                    os.path.join(folder, "vis"),
                    num_images=cfg.CAD.VIS_NUM_IMAGES,
                    score_thresh=cfg.CAD.VIS_SCORE_THRESH,
                )
        return results
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
