"""Seeded labeled/unlabeled splits for semi-supervised training (Guided Distillation).

`{base}_{P}pct_seed{S}_labeled` holds floor(P·N/100) images of the base split, drawn without
replacement by `numpy.random.default_rng(S)` (the reference samples without a seed);
`{base}_{P}pct_seed{S}_unlabeled` holds exactly the other images, so the two partition the base.
The official unlabeled pool is the whole base split (labeled images included): the trainer
reproduces it with `SSL.UNLABELED_INCLUDES_LABELED True` (default) by drawing unlabeled images
from both splits. Split files are cached as JSON id lists under `$DETECTRON2_DATASETS/ssl_splits/`.

Names for P in `STANDARD_PERCENTAGES` and seeds `DEFAULT_SEEDS` are registered on import; any
other P/seed is registered on demand by `register_by_name` (called by train_net's setup).

`SSL.PERCENTAGE` (the official command line) names these splits through `labeled_split_name`:
the official Cityscapes lists where they exist (`cad.data.cityscapes_lists`), else the seeded split.
"""
import json
import logging
import math
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from iopath.common.file_io import file_lock

from cad.data.cityscapes_lists import NAME_RE as LIST_NAME_RE
from cad.data.cityscapes_lists import has_official_list, list_split_name, register_list_by_name
from cad.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

STANDARD_PERCENTAGES = (0.4, 1, 2, 5, 10, 20, 30, 50)
DEFAULT_SEEDS = (0, 1, 2)
# base splits that get SSL splits (Detectron2's COCO train2017, cad's multi-class shapes)
SSL_BASES = ("coco_2017_train", "synthetic_shapes_multiclass_train")
NAME_RE = re.compile(r"^(?P<base>.+)_(?P<pct>\d+(?:\.\d+)?)pct_seed(?P<seed>\d+)_(?P<part>labeled|unlabeled)$")


def split_name(base: str, percentage: float, seed: int, part: str) -> str:
    """e.g. ("coco_2017_train", 0.4, 0, "labeled") -> "coco_2017_train_0.4pct_seed0_labeled"."""
    return f"{base}_{percentage:g}pct_seed{seed}_{part}"


def partition_ids(image_ids: Iterable, percentage: float, seed: int) -> Tuple[List, List]:
    """(labeled, unlabeled) sorted id lists: floor(P·N/100) ids drawn without replacement with
    `default_rng(seed)` from the sorted unique ids (reference count), the rest unlabeled."""
    if not 0 < percentage <= 100:
        raise ValueError(f"percentage must be in (0, 100], got {percentage}")
    ids = sorted(set(image_ids))
    n = int(math.floor(percentage * len(ids) / 100 + 1e-9))
    chosen = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    labeled = sorted(ids[i] for i in chosen.tolist())
    taken = set(labeled)
    return labeled, [i for i in ids if i not in taken]


def split_file(root: Path, base: str, percentage: float, seed: int) -> Path:
    return Path(root) / "ssl_splits" / f"{base}_{percentage:g}pct_seed{seed}.json"


def load_split_ids(base: str, percentage: float, seed: int, root: Path) -> Dict[str, List]:
    """{"labeled": ids, "unlabeled": ids}, read from the cached JSON or computed and cached."""
    path = split_file(root, base, percentage, seed)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(str(path)):
            if not path.exists():
                ids = [d["image_id"] for d in DatasetCatalog.get(base)]
                labeled, unlabeled = partition_ids(ids, percentage, seed)
                atomic_write_json(path, {"base": base, "percentage": percentage, "seed": seed,
                                         "labeled": labeled, "unlabeled": unlabeled})
                logger.info("Wrote split %s: %d labeled, %d unlabeled", path, len(labeled), len(unlabeled))
    with open(path) as f:
        return json.load(f)


def load_ssl_split(base: str, percentage: float, seed: int, part: str, root: Path) -> List[Dict]:
    """Dataset dicts of the base split restricted to one part of the partition."""
    keep = set(load_split_ids(base, percentage, seed, root)[part])
    return [d for d in DatasetCatalog.get(base) if d["image_id"] in keep]


def register_ssl_split(base: str, percentage: float, seed: int, root: Path) -> None:
    """Register `_labeled` and `_unlabeled` of (base, P, seed); metadata copied from the base."""
    meta = {k: v for k, v in MetadataCatalog.get(base).as_dict().items() if k != "name"}
    for part in ("labeled", "unlabeled"):
        name = split_name(base, percentage, seed, part)
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda p=part: load_ssl_split(base, percentage, seed, p, Path(root)))
        MetadataCatalog.get(name).set(ssl_base=base, ssl_percentage=percentage, ssl_seed=seed, **meta)


def register_by_name(name: str, root: Path) -> Optional[str]:
    """Register `name` if it is an SSL split name (seeded or official list) of a registered base;
    returns the base or None."""
    if LIST_NAME_RE.match(name):
        return register_list_by_name(name, root)
    m = NAME_RE.match(name)
    if m is None or m["base"] not in DatasetCatalog.list():
        return None
    register_ssl_split(m["base"], float(m["pct"]), int(m["seed"]), root)
    return m["base"]


def register_standard_ssl_splits(root: Path) -> None:
    for base in SSL_BASES:
        if base not in DatasetCatalog.list():
            continue
        for pct in STANDARD_PERCENTAGES:
            for seed in DEFAULT_SEEDS:
                register_ssl_split(base, pct, seed, root)


def percentage_of(value: int) -> float:
    """The percentage of labeled images that `SSL.PERCENTAGE value` means (official convention:
    train_net.setup appends the value to the split name, tools/datasets/generate_coco_splits.py
    names a split of p < 1 % by int(100/p)): value for 1..100, 100/value above 100 (250 -> 0.4)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"SSL.PERCENTAGE must be a positive integer, got {value!r}")
    return float(value) if value <= 100 else 100.0 / value


def labeled_split_name(base: str, value: int, seed: int) -> str:
    """The labeled split of `base` for `SSL.PERCENTAGE value`: the official list split when the
    official code has a list for it (Cityscapes 5/10/20/30 %), else the seeded split of `seed`.
    Raises ValueError when the percentage has no exact short name (e.g. 300 -> 0.333... %)."""
    if has_official_list(base, value):
        return list_split_name(base, value, "labeled")
    pct = percentage_of(value)
    if float(f"{pct:g}") != pct:
        raise ValueError(f"SSL.PERCENTAGE {value} means {pct!r} %, which has no exact split name; name the "
                         f"split instead, e.g. DATASETS.TRAIN ('{base}_{pct:.2g}pct_seed{seed}_labeled',)")
    return split_name(base, pct, seed, "labeled")


def split_percentage(name: str) -> Optional[float]:
    """The labeled percentage of an SSL split name (seeded or list), None for any other name."""
    m = LIST_NAME_RE.match(name) or NAME_RE.match(name)
    return float(m["pct"]) if m else None
