"""Cityscapes labeled/unlabeled splits from Guided Distillation's official image lists.

The official repository ships `data_splits/cityscapes/perc_{5,10,20,30}.txt`: one
`<city>_<seq>_<frame>_gtFine_instanceIds.png` per line (144 / 296 / 592 / 888 of the 2975 train
images), and builds the labeled split of `SSL.PERCENTAGE P` from `perc_P.txt`
(tools/datasets/generate_cityscapes_splits.py). Those files are CC BY-NC 4.0, so cad does not ship
them: copy the folder into the dataset root, `$DETECTRON2_DATASETS/data_splits/cityscapes/perc_P.txt`
(the official repository's own path under the root). The lists are checked against the SHA-256 of
the official files' sorted names: an official list is logged as such, any other list with a warning
(numbers trained on it are not comparable with the paper's).

`{base}_{P}pct_list_labeled`: the listed images of the base split, annotations read by
Detectron2's Cityscapes loader for those images only. `{base}_{P}pct_list_unlabeled`: the base's
other images, without annotations (file name, image id, empty `annotations`). The two partition the base; the
official unlabeled pool is the whole train split, which the trainer rebuilds from both
(`SSL.UNLABELED_INCLUDES_LABELED True`).
"""
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.config import ConfigError
from cad.data.paths import DatasetMissingError, require

logger = logging.getLogger(__name__)

# base split -> folder of its perc_P.txt lists, relative to $DETECTRON2_DATASETS
LIST_FOLDERS = {"cityscapes_fine_instance_seg_train": "data_splits/cityscapes"}
# SHA-256 of "\n".join(sorted names) of the official lists (GuidedDistillation b48f2a8, data_splits/cityscapes)
OFFICIAL_LIST_SHA256 = {
    5: "5b5717e2c87e00701d326a2946999b857dd3d01c8d827a54a1bacda0ea88bdcf",
    10: "e06a2910f728688e4e6d36e0a8f466d06fc005f3c1d00a5e38dbc0bd1d9097ee",
    20: "509204a80b20877ac6b27231c84ca7c183ce654b594626dfd445d8f93de237f1",
    30: "7f65f44d8164fb76a2688fe52cd9f63e26175f18e1e8a4d1f28752986bf57778",
}
LIST_SUFFIX = "_gtFine_instanceIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"
NAME_RE = re.compile(r"^(?P<base>.+)_(?P<pct>\d+)pct_list_(?P<part>labeled|unlabeled)$")
README_SECTION = "Cityscapes"


def list_split_name(base: str, percentage: int, part: str) -> str:
    """e.g. ("cityscapes_fine_instance_seg_train", 5, "labeled") -> "..._train_5pct_list_labeled"."""
    return f"{base}_{percentage}pct_list_{part}"


def has_official_list(base: str, percentage: int) -> bool:
    """True when the official code has a list for this base split and percentage."""
    return base in LIST_FOLDERS and percentage in OFFICIAL_LIST_SHA256


def list_path(root: Path, base: str, percentage: int) -> Path:
    return Path(root) / LIST_FOLDERS[base] / f"perc_{percentage}.txt"


def names_sha256(names: List[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def read_image_list(path: Path, split: str, percentage: int) -> List[str]:
    """The image stems (`<city>_<seq>_<frame>`) of a list file, in file order. Raises
    `DatasetMissingError` when the file is missing, `ConfigError` for a malformed line or a repeat."""
    require(path, split, README_SECTION)
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    for i, name in enumerate(names, 1):
        if not name.endswith(LIST_SUFFIX) or "/" in name:
            raise ConfigError(f"{path}, line {i}: expected <city>_<seq>_<frame>{LIST_SUFFIX}, got '{name}'")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path} lists an image twice")
    digest = names_sha256(names)
    if digest == OFFICIAL_LIST_SHA256.get(percentage):
        logger.info("%s: the official Guided Distillation %d %% list (%d images)", path, percentage, len(names))
    else:
        logger.warning("%s is not the official Guided Distillation %d %% list (sha256 %s): results are not "
                       "comparable with the paper's", path, percentage, digest[:12])
    return [name[: -len(LIST_SUFFIX)] for name in names]


def _image_files(image_dir: Path) -> Dict[str, Path]:
    """stem -> image path of every `<city>/<stem>_leftImg8bit.png` under `image_dir`."""
    return {p.name[: -len(IMAGE_SUFFIX)]: p for p in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))}


def load_list_split(base: str, percentage: int, part: str, root: Path) -> List[Dict]:
    """Dataset dicts of one part of the list partition of `base` (see the module docstring)."""
    meta = MetadataCatalog.get(base)
    image_dir = require(Path(meta.image_dir), base, README_SECTION)
    name = list_split_name(base, percentage, part)
    stems = read_image_list(list_path(root, base, percentage), name, percentage)
    images = _image_files(image_dir)
    missing = [s for s in stems if s not in images]
    if missing:
        raise DatasetMissingError(f"dataset '{name}': {len(missing)} listed images are not under '{image_dir}', "
                                  f"e.g. '{missing[0]}{IMAGE_SUFFIX}'")
    if part == "unlabeled":
        listed = set(stems)
        return [{"file_name": str(p), "image_id": p.name, "annotations": []} for s, p in images.items() if s not in listed]
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    # Detectron2's loader reads every image of a folder tree: give it a tree of links to the
    # listed images only, with the real gtFine folder, then point the records at the real files.
    with tempfile.TemporaryDirectory(prefix="cad-cityscapes-list-") as tmp:
        for stem in stems:
            src = images[stem]
            (Path(tmp) / src.parent.name).mkdir(exist_ok=True)
            os.symlink(src, Path(tmp) / src.parent.name / src.name)
        dicts = load_cityscapes_instances(tmp, str(meta.gt_dir), from_json=True, to_polygons=True)
    for d in dicts:
        d["file_name"] = str(images[Path(d["file_name"]).name[: -len(IMAGE_SUFFIX)]])
    logger.info("Loaded %d labeled images of '%s'", len(dicts), name)
    return dicts


def register_list_split(base: str, percentage: int, root: Path) -> None:
    """Register `_labeled` and `_unlabeled` of (base, P); metadata copied from the base."""
    meta = {k: v for k, v in MetadataCatalog.get(base).as_dict().items() if k != "name"}
    for part in ("labeled", "unlabeled"):
        name = list_split_name(base, percentage, part)
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda p=part: load_list_split(base, percentage, p, Path(root)))
        MetadataCatalog.get(name).set(ssl_base=base, ssl_percentage=percentage,
                                      ssl_list=str(list_path(root, base, percentage)), **meta)


def register_list_by_name(name: str, root: Path) -> Optional[str]:
    """Register `name` if it is a list split of a base in LIST_FOLDERS; returns the base or None."""
    m = NAME_RE.match(name)
    if m is None or m["base"] not in LIST_FOLDERS or m["base"] not in DatasetCatalog.list():
        return None
    register_list_split(m["base"], int(m["pct"]), root)
    return m["base"]


def register_official_list_splits(root: Path) -> None:
    for base in LIST_FOLDERS:
        if base in DatasetCatalog.list():
            for percentage in OFFICIAL_LIST_SHA256:
                register_list_split(base, percentage, root)
