"""Build a frozen config from command-line arguments, adapted to the machine."""
import argparse
import difflib
import logging
import os

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog

from cad.config import add_cad_config, check_choices
from cad.data.file_splits import SYNTAX, SplitSpecError, is_file_split, register_file_split
from cad.data.paths import datasets_root
from cad.data.ssl_splits import register_by_name

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file, key, value or dataset name that cannot be used."""


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """Defaults + cad keys + `--config-file` + `--train/test-dataset` + trailing overrides.

    Dataset specs `coco:ANNOTATIONS.json:IMAGE_DIR` and `images:DIR` are registered and replaced
    by their registered names (`cad.data.file_splits`). Raises `ConfigError` (one line) for an
    unknown key, a value outside `cad.config.CHOICES`, an unregistered dataset name or a spec
    whose files are missing.
    """
    cfg = get_cfg()
    add_cad_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(list(args.opts))
        check_choices(cfg)
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {e.filename or args.config_file}") from e
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"bad config in {args.config_file} or overrides: {e}") from e
    if getattr(args, "train_dataset", None):
        cfg.DATASETS.TRAIN = (args.train_dataset,)
    if getattr(args, "test_dataset", None):
        cfg.DATASETS.TEST = (args.test_dataset,)
    cfg.DATASETS.TRAIN = register_file_splits(cfg.DATASETS.TRAIN, train=True)
    cfg.DATASETS.TEST = register_file_splits(cfg.DATASETS.TEST)
    check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    adapt_to_device(cfg)
    cfg.freeze()
    return cfg


def register_file_splits(names, train: bool = False) -> tuple:
    """`names` with every `coco:`/`images:` spec registered and replaced by its split name;
    raises `ConfigError` for a malformed spec, a missing file/folder, or (`train`) an `images:`
    folder, which has no annotations to train on."""
    for name in names:
        if train and name.startswith("images:"):
            raise ConfigError(f"dataset '{name}' has no annotations to train on: use it as --test-dataset, "
                              "or train on coco:ANNOTATIONS.json:IMAGE_DIR")
    try:
        return tuple(register_file_split(n) if is_file_split(n) else n for n in names)
    except SplitSpecError as e:
        raise ConfigError(str(e)) from e


def check_datasets(names) -> None:
    """Raise `ConfigError` naming the closest registered splits when a name is unknown."""
    for name in names:
        register_by_name(name, datasets_root())  # SSL splits of any percentage/seed
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown dataset '{name}'{hint} (registered splits: datasets/README.md; files: {SYNTAX})"
            )


def adapt_to_device(cfg: CfgNode) -> None:
    """Without CUDA: MODEL.DEVICE=cpu, and every `NORM: SyncBN` becomes `naiveSyncBN`
    (Detectron2's all-reduce BN, which works with gloo; plain BN in one process)."""
    if torch.cuda.is_available():
        return
    if cfg.MODEL.DEVICE.startswith("cuda"):
        logger.info("CUDA is not available: MODEL.DEVICE cpu")
        cfg.MODEL.DEVICE = "cpu"
    for node in _nodes(cfg):
        if node.get("NORM") == "SyncBN":
            node.NORM = "naiveSyncBN"


def _nodes(cfg: CfgNode):
    yield cfg
    for value in cfg.values():
        if isinstance(value, CfgNode):
            yield from _nodes(value)


def check_trainable(cfg: CfgNode) -> None:
    """Raise `ConfigError` when `MODEL.META_ARCHITECTURE` cannot be trained.

    Pseudo-label generators (LOST, MaskCut, VoteCut: `cad.modeling.pseudo_labelers`) declare
    `trainable = False`; they only run with `--eval-only`.
    """
    from detectron2.modeling import META_ARCH_REGISTRY

    name = cfg.MODEL.META_ARCHITECTURE
    if name in META_ARCH_REGISTRY and not getattr(META_ARCH_REGISTRY.get(name), "trainable", True):
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE {name} generates pseudo-labels and has no trainable parameters; "
            "run it with --eval-only (add CAD.EVAL_DUMP_TRAINING_JSON to write its pseudo-labels)"
        )


def check_weights(path: str, output_dir: str = "", resume: bool = False, required: bool = False) -> None:
    """Raise `ConfigError` when the checkpoint `path` (MODEL.WEIGHTS) is a local file that does not
    exist, unless `resume` finds a checkpoint in `output_dir` (which then replaces it).

    Remote paths (`scheme://`) are left to Detectron2's PathManager. "" means random
    initialisation, an error when `required`.
    """
    if resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        return
    if not path:
        if required:
            raise ConfigError("no weights given: pass --weights PATH or MODEL.WEIGHTS PATH (a trained checkpoint)")
        return
    if "://" not in path and not os.path.isfile(path):
        raise ConfigError(
            f"MODEL.WEIGHTS '{path}' not found: train the stage that writes it first, or pass "
            "MODEL.WEIGHTS PATH ('' for random initialisation)"
        )
