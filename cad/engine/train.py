"""What `tools/train_net.py` runs in each process: train, or evaluate with `--eval-only`."""
import argparse
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_setup
from detectron2.utils import comm

from cad.checkpoint.layouts import find_layout
from cad.distillation.gd_checkpoints import load_strict
from cad.engine.setup import build_cfg
from cad.engine.trainer import TRAINER_REGISTRY
from cad.utils.visualize import render_predictions

logger = logging.getLogger("cad")


def setup(args: argparse.Namespace):
    """Frozen config for this process, with Detectron2's logging/output-dir setup."""
    cfg = build_cfg(args)
    default_setup(cfg, args)
    if cfg.CAD.NUM_THREADS > 0:
        torch.set_num_threads(cfg.CAD.NUM_THREADS)
    return cfg


def load_eval_weights(model: torch.nn.Module, cfg, resume: bool) -> None:
    """MODEL.WEIGHTS (or, with --resume, the last checkpoint of OUTPUT_DIR) into `model`. A file
    in a registered published layout (`cad.checkpoint.layouts`, e.g. a Guided Distillation
    teacher-student file) is converted and loaded strictly; any other file goes through
    Detectron2's checkpointer. Stand-in until the generic `cad.checkpoint` loader replaces it."""
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    path = cfg.MODEL.WEIGHTS
    if not (resume and checkpointer.has_checkpoint()) and os.path.isfile(path):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        layout = find_layout(obj)
        if layout is not None:
            load_strict(model, layout.to_cad(obj, cfg), f"MODEL.WEIGHTS '{path}' ({layout.name})")
            return
    checkpointer.resume_or_load(path, resume=resume)


def main(args: argparse.Namespace):
    """Train (resuming with `--resume`) or evaluate (`--eval-only`); returns the metrics dict."""
    cfg = setup(args)
    trainer_cls = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        load_eval_weights(model, cfg, args.resume)
        results = trainer_cls.test(cfg, model)
        if comm.is_main_process() and cfg.CAD.VIS_NUM_IMAGES > 0:
            for name in cfg.DATASETS.TEST:
                folder = os.path.join(cfg.OUTPUT_DIR, "inference", name)
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
