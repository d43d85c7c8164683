"""Build a frozen config from command-line arguments, adapted to the machine."""
import argparse
import difflib
import logging
import os
import zipfile

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.config import ConfigError, add_cad_config, check_choices
from cad.data.file_splits import SYNTAX, SplitSpecError, is_file_split, register_file_split
from cad.data.paths import datasets_root
from cad.data.ssl_splits import labeled_split_name, percentage_of, register_by_name, split_percentage

logger = logging.getLogger(__name__)


def default_cfg() -> CfgNode:
    """Detectron2's defaults with every cad key (`add_cad_config`), unfrozen."""
    cfg = get_cfg()
    add_cad_config(cfg)
    return cfg


def is_config_key(cfg: CfgNode, key: str) -> bool:
    """Whether the dotted `key` (e.g. MODEL.WEIGHTS) names a value or node of `cfg`."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """Defaults + cad keys + `--config-file` + `--train/test-dataset` + trailing overrides.

    Dataset specs `coco:ANNOTATIONS.json:IMAGE_DIR` and `images:DIR` are registered and replaced
    by their registered names (`cad.data.file_splits`). Raises `ConfigError` (one line) for an
    unknown key, a value outside `cad.config.CHOICES`, an unregistered dataset name or a spec
    whose files are missing. `SSL.PERCENTAGE` then picks the labeled split of each training
    split (`apply_ssl_percentage`).
    """
    cfg = default_cfg()
    try:
        _merge_config_file(cfg, args.config_file)
        cfg.merge_from_list(list(args.opts))
        check_choices(cfg)
    except ConfigError:
        raise
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {e.filename or args.config_file}") from e
    except (KeyError, ValueError, AssertionError) as e:
        if "SSL.PERCENTAGE" in str(e):
            raise ConfigError(f"SSL.PERCENTAGE takes an integer, as the official code: {PERCENTAGE_SYNTAX}") from e
        raise ConfigError(f"bad config in {args.config_file} or overrides: {e}") from e
    if getattr(args, "train_dataset", None):
        cfg.DATASETS.TRAIN = (args.train_dataset,)
    if getattr(args, "test_dataset", None):
        cfg.DATASETS.TEST = (args.test_dataset,)
    cfg.DATASETS.TRAIN = register_file_splits(cfg.DATASETS.TRAIN, train=True)
    cfg.DATASETS.TEST = register_file_splits(cfg.DATASETS.TEST)
    apply_ssl_percentage(cfg)
    check_eval_who(cfg)
    check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    adapt_to_device(cfg)
    cfg.freeze()
    return cfg


def _merge_config_file(cfg: CfgNode, path: str) -> None:
    """`cfg.merge_from_file(path)`, with `ConfigError` for a file that is not a YAML mapping."""
    if os.path.isdir(path):
        raise ConfigError(f"--config-file '{path}' is a folder; pass a .yaml file")
    try:
        cfg.merge_from_file(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"config file '{path}' is not valid YAML ({problem}{where})") from e
    except (AttributeError, TypeError) as e:  # the YAML is a scalar or a list, not KEY: VALUE pairs
        raise ConfigError(f"config file '{path}' is not a Detectron2 config (expected KEY: VALUE mappings)") from e


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


PERCENTAGE_SYNTAX = ("P in 1..100 for P % of DATASETS.TRAIN, or 100/P above 100 for less than 1 % (250 = 0.4 %); "
                     "for another fraction name the split: DATASETS.TRAIN ('<split>_<P>pct_seed<S>_labeled',)")


def apply_ssl_percentage(cfg: CfgNode) -> None:
    """`SSL.PERCENTAGE` != 100 replaces each DATASETS.TRAIN split by its labeled part, as the
    official train_net.setup appends `_{PERCENTAGE}` to the split name (official: to the first
    split only): the official Cityscapes list for 5/10/20/30 %, else cad's split seeded by
    SSL.SPLIT_SEED (`cad.data.ssl_splits.labeled_split_name`). A split that already is a labeled
    part of the same percentage is kept (a saved config.yaml loads again). Raises `ConfigError`
    for a value that is not a positive integer, an unknown split, or a split of another percentage."""
    value = cfg.SSL.PERCENTAGE
    if value == 100:
        return
    try:
        pct = percentage_of(value)
    except ValueError as e:
        raise ConfigError(f"SSL.PERCENTAGE {value!r}: {PERCENTAGE_SYNTAX}") from e
    resolved = []
    for name in cfg.DATASETS.TRAIN:
        check_datasets([name])
        existing = split_percentage(name)
        if existing is not None:
            if abs(existing - pct) > 1e-9 * pct:
                raise ConfigError(f"DATASETS.TRAIN '{name}' is a {existing:g} % split but SSL.PERCENTAGE {value} asks "
                                  f"for {pct:g} %: name the whole split (e.g. '{MetadataCatalog.get(name).ssl_base}')")
            resolved.append(name)
            continue
        try:
            resolved.append(labeled_split_name(name, value, cfg.SSL.SPLIT_SEED))
        except ValueError as e:
            raise ConfigError(str(e)) from e
        logger.info("SSL.PERCENTAGE %d: training split '%s' -> '%s' (%g %%)", value, name, resolved[-1], pct)
    cfg.DATASETS.TRAIN = tuple(resolved)


def check_eval_who(cfg: CfgNode) -> None:
    """Raise `ConfigError` unless SSL.EVAL_WHO is student, teacher or both (any case)."""
    if str(cfg.SSL.EVAL_WHO).lower() not in ("student", "teacher", "both"):
        raise ConfigError(f"SSL.EVAL_WHO is '{cfg.SSL.EVAL_WHO}'; expected STUDENT, TEACHER or BOTH")


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

    URLs (`scheme://`) are downloaded by the loader (`cad.checkpoint.sources`). "" means random
    initialisation, an error when `required`. With `resume`, the checkpoint that
    `output_dir/last_checkpoint` names must exist and be a complete PyTorch zip archive (what
    cad's trainers save; a file cut short by a crash or a full disk is not one).
    """
    if resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        check_resume_checkpoint(output_dir)
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


def check_teacher_checkpoint(cfg: CfgNode, eval_only: bool = False, resume: bool = False) -> None:
    """Raise `ConfigError` when Guided Distillation stage 2 (`SSL.TRAIN_SSL True`) is trained
    without a readable SSL.TEACHER_CKPT (the stage-1 checkpoint), unless `resume` finds a
    checkpoint in OUTPUT_DIR (which holds the teacher). `--eval-only` does not need it."""
    if eval_only or cfg.CAD.TRAINER != "GuidedDistillationTrainer" or not cfg.SSL.TRAIN_SSL:
        return
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    path = cfg.SSL.TEACHER_CKPT
    if not path:
        raise ConfigError("SSL.TEACHER_CKPT is empty: stage 2 (SSL.TRAIN_SSL True, the default) needs the stage-1 "
                          "checkpoint, pass SSL.TEACHER_CKPT PATH (stage 1: SSL.TRAIN_SSL False)")
    if "://" not in path and not os.path.isfile(path):
        raise ConfigError(f"SSL.TEACHER_CKPT '{path}' not found: train stage 1 first (it writes model_final.pth) or pass SSL.TEACHER_CKPT PATH")


def check_resume_checkpoint(output_dir: str) -> None:
    """Raise `ConfigError` when `output_dir/last_checkpoint` names a missing or incomplete file."""
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    fix = f"delete {os.path.join(output_dir, 'last_checkpoint')} to start over, or write the name of a complete checkpoint into it"
    if not os.path.isfile(path):
        raise ConfigError(f"--resume: {output_dir}/last_checkpoint names '{name}', which does not exist; {fix}")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"--resume: '{path}' is not a complete PyTorch checkpoint (cut short?); {fix}")


def check_output_dir(path: str, option: str = "OUTPUT_DIR") -> None:
    """Raise `ConfigError` when `path` (or the nearest existing folder above it) is a file."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{option} '{path}': '{probe}' is a file, not a folder")
