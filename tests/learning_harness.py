"""In-process training for the learning tests: the public `tools/train_net.py` path
(`cad.engine.cli.train_argument_parser` -> `cad.engine.train.setup` -> the config's trainer),
returning the per-iteration losses and the final evaluation."""
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.engine.cli import train_argument_parser
from cad.engine.train import setup
from cad.engine.trainer import EVAL_RESULTS_FILE, TRAINER_REGISTRY


def load_cfg(config: Path, opts: Sequence[str]):
    """The frozen config `tools/train_net.py --config-file config opts...` runs with."""
    return setup(train_argument_parser().parse_args(["--config-file", str(config), *opts]))


def train_and_evaluate(config: Path, opts: Sequence[str], loss_key: str = "total_loss") -> Tuple[List[float], Dict]:
    """Train `config` with overrides `opts` (evaluated on DATASETS.TEST after the last iteration).

    Returns (the `loss_key` value of every iteration, the evaluation results dict).
    """
    cfg = load_cfg(config, opts)
    trainer = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = json.loads((Path(cfg.OUTPUT_DIR) / EVAL_RESULTS_FILE).read_text())
    losses = [value for value, _ in trainer.storage.history(loss_key).values()]
    return losses, results


def loss_drop(losses: Sequence[float], window: int = 5) -> float:
    """Mean loss of the first `window` iterations / mean of the last `window` ones."""
    return float(np.mean(losses[:window]) / np.mean(losses[-window:]))


def register_subset(name: str, source: str, num_images: int) -> str:
    """Register `name` as the first `num_images` images of the registered split `source`
    (same metadata, no cached COCO JSON); returns `name`."""
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: DatasetCatalog.get(source)[:num_images])
        meta = {k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k not in ("name", "json_file")}
        MetadataCatalog.get(name).set(**meta)
    return name


def evaluate_untrained(config: Path, opts: Sequence[str]) -> Dict:
    """The evaluation of the randomly initialised model of `config` (same overrides and seed as
    the training run): the baseline a model that learns nothing reaches."""
    cfg = load_cfg(config, opts)
    trainer_cls = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)
    return trainer_cls.test(cfg, trainer_cls.build_model(cfg))
