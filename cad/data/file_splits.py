"""Splits named on the command line by their files: `coco:ANNOTATIONS.json:IMAGE_DIR` and `images:DIR`.

`--train-dataset`, `--test-dataset` and `DATASETS.TRAIN`/`TEST` accept, besides registered
names,

- `coco:ANNOTATIONS.json:IMAGE_DIR`: any COCO-format JSON (e.g. tools/discover.py's pseudo-labels,
  tools/self_training_ann.py's output) with its image folder, loaded class-agnostically with each
  annotation's `score` kept as the soft target (as the predefined VoteCut/self-training splits);
- `images:DIR`: every image under DIR (recursively, sorted by path, ids 1..N as
  `tools/discover.py --images DIR` numbers them), without annotations: a test split whose
  `--eval-only` writes predictions (`coco_instances_results.json`) and PNGs but no metrics.

`register_file_split` registers such a spec under a derived name without '/' or ':' (the name
becomes a folder, `OUTPUT_DIR/inference/<name>/`): `<kind>_<stem>_<hash>`, where the hash is that
of the absolute paths, so every process of a multi-process or SLURM run, which all build their
config through `cad.engine.setup.build_cfg`, registers the same spec under the same name.
Registration only checks that the paths exist; the JSON is read once, when the split is loaded
(as for a predefined split), and that load checks the format and that every listed image exists.
"""
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.data.coco import CLASS_AGNOSTIC_METADATA, load_class_agnostic_coco
from cad.discovery.sources import list_image_dir
from cad.errors import UserError

logger = logging.getLogger(__name__)

SPEC_RE = re.compile(r"^(?:coco:(?P<json>.+?\.json):(?P<root>.+)|images:(?P<dir>.+))$")
SYNTAX = "coco:ANNOTATIONS.json:IMAGE_DIR or images:DIR"
# `evaluator_type` of `images:DIR` splits: cad.evaluation.build.predictions (no ground truth).
PREDICTIONS_ONLY = "predictions"
# Errors a non-COCO JSON raises inside pycocotools / Detectron2's load_coco_json.
_NOT_COCO_ERRORS = (AssertionError, KeyError, TypeError, ValueError, AttributeError, IndexError)


class SplitSpecError(UserError, ValueError):
    """A `coco:`/`images:` split whose files are missing or malformed (one-line message)."""


def is_file_split(name: str) -> bool:
    """True for names that follow the `coco:` / `images:` syntax (well-formed or not)."""
    return name.startswith(("coco:", "images:"))


def parse_file_split(spec: str) -> Tuple[str, Optional[Path], Path]:
    """`(kind, json or None, image folder)` of a spec; kind is "coco" or "images".

    Raises `SplitSpecError` when the spec does not follow the syntax.
    """
    m = SPEC_RE.match(spec)
    if m is None:
        raise SplitSpecError(f"dataset '{spec}': expected {SYNTAX}")
    if m["dir"] is not None:
        return "images", None, Path(m["dir"])
    return "coco", Path(m["json"]), Path(m["root"])


def split_name(kind: str, json_file: Optional[Path], image_root: Path) -> str:
    """`<kind>_<stem>_<hash6>`: stem of the JSON (or the folder's name), hash of the absolute paths."""
    paths = [os.path.abspath(p) for p in (json_file, image_root) if p is not None]
    digest = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:6]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", (json_file.stem if json_file else Path(paths[-1]).name) or "root")
    return f"{kind}_{stem}_{digest}"


def register_file_split(spec: str) -> str:
    """Register `spec` (see the module docstring) unless done; returns its registered name.

    Raises `SplitSpecError` for a malformed spec, a missing JSON file or a missing image folder.
    """
    kind, json_file, image_root = parse_file_split(spec)
    if json_file is not None and not json_file.is_file():
        raise SplitSpecError(f"dataset '{spec}': annotation file '{json_file}' not found")
    if not image_root.is_dir():
        raise SplitSpecError(f"dataset '{spec}': image folder '{image_root}' not found")
    name = split_name(kind, json_file, image_root)
    if name in DatasetCatalog.list():
        return name
    json_file = json_file.absolute() if json_file is not None else None
    image_root = image_root.absolute()
    if kind == "images":
        DatasetCatalog.register(name, lambda: load_image_folder(image_root, spec))
        MetadataCatalog.get(name).set(image_root=str(image_root), evaluator_type=PREDICTIONS_ONLY,
                                      source=spec, **CLASS_AGNOSTIC_METADATA)
    else:
        DatasetCatalog.register(name, lambda: load_coco_file(json_file, image_root, spec))
        MetadataCatalog.get(name).set(image_root=str(image_root), gt_json_file=str(json_file),
                                      evaluator_type="class_agnostic", source=spec, **CLASS_AGNOSTIC_METADATA)
    logger.info("Registered '%s' as split '%s'", spec, name)
    return name


def load_coco_file(json_file: Path, image_root: Path, spec: str) -> List[Dict]:
    """Class-agnostic dataset dicts of a `coco:` split (`score` kept on each annotation).

    Raises `SplitSpecError` when the JSON is not a COCO annotation file with images, or when
    images it lists are not in `image_root`.
    """
    try:
        dicts = load_class_agnostic_coco(json_file, image_root, spec, "Your own images")
    except _NOT_COCO_ERRORS as e:
        raise SplitSpecError(
            f"dataset '{spec}': '{json_file}' is not a COCO annotation JSON ({type(e).__name__}: {e})"
        ) from None
    if not dicts:
        raise SplitSpecError(f"dataset '{spec}': '{json_file}' lists no images (expected a COCO JSON with 'images')")
    missing = missing_files([d["file_name"] for d in dicts])
    if missing:
        raise SplitSpecError(
            f"dataset '{spec}': {len(missing)} of the {len(dicts)} images listed in '{json_file}' "
            f"are not in '{image_root}' (first: '{missing[0]}')"
        )
    return dicts


def missing_files(paths: List[str]) -> List[str]:
    """The `paths` that are not in their folder, in order; each folder is listed once (no stat per
    file, which is slower: docs/benchmarks.md, "Notes behind choices in the code")."""
    listings: Dict[str, set] = {}
    missing = []
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = {entry.name for entry in os.scandir(folder or ".")}
            except (FileNotFoundError, NotADirectoryError):
                listings[folder] = set()
        if name not in listings[folder]:
            missing.append(path)
    return missing


def load_image_folder(image_root: Path, spec: str) -> List[Dict]:
    """Dataset dicts (`file_name`, `image_id`; no sizes: the mapper reads them) of an `images:` split."""
    records = list_image_dir(image_root)
    if not records:
        raise SplitSpecError(f"dataset '{spec}': no images in '{image_root}'")
    logger.info("Listed %d images of '%s'", len(records), spec)
    return [{"file_name": r.path, "image_id": r.image_id} for r in records]
