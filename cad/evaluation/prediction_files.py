"""Boxes of a predictions file on a registered split, whatever wrote it: a COCO results list
(tools/train_net.py's coco_instances_results.json, LOST's released CAD_predictions/*.json), a COCO
JSON of pseudo-labels (tools/discover.py) or LOST's pickle of boxes (main_lost.py's preds.pkl,
the released LOST_VOC07.pkl: image name -> [x0, y0, x1, y1])."""
import json
import pickle
from pathlib import Path, PurePosixPath
from typing import Dict, Hashable, List, Sequence, Tuple

import numpy as np

from cad.evaluation.pseudo_masks import match_image_ids

__all__ = ["image_index", "load_prediction_boxes"]


def image_index(image_keys: Sequence[Hashable]) -> Dict:
    """Lookup of an `image_id` written by another tool: the key itself, and its string and integer
    forms (LOST's scripts compare VOC ids "000005" with int(...))."""
    index: Dict = {}
    for i, key in enumerate(image_keys):
        index.setdefault(key, i)
        index.setdefault(str(key), i)
        try:
            index.setdefault(int(key), i)
        except (TypeError, ValueError):
            pass
    return index


def _records_by_name(records: Sequence[Dict]) -> Dict[str, int]:
    """Unique base names (and base names without extension) of the split's files -> position."""
    names: Dict[str, List[int]] = {}
    for i, r in enumerate(records):
        base = PurePosixPath(str(r["file_name"]).replace("\\", "/")).name
        for key in {base, base.rsplit(".", 1)[0]}:
            names.setdefault(key, []).append(i)
    return {k: v[0] for k, v in names.items() if len(v) == 1}


def load_prediction_boxes(path: Path, records: Sequence[Dict]) -> Tuple[Dict[Hashable, np.ndarray], Dict[Hashable, np.ndarray]]:
    """({split image_id: (n, 4) [x0, y0, x1, y1]}, {split image_id: (n,) scores}) of the file `path`
    on the split's dataset dicts `records`. Raises ValueError when the file is of none of the
    kinds above, or names an image that is not in the split."""
    path = Path(path)
    ids = [r["image_id"] for r in records]
    by_id, by_name = image_index(ids), _records_by_name(records)
    boxes: Dict[Hashable, list] = {}
    scores: Dict[Hashable, list] = {}

    def add(position: int, box, score: float) -> None:
        boxes.setdefault(ids[position], []).append([float(v) for v in box])
        scores.setdefault(ids[position], []).append(float(score))

    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            data = pickle.load(f)  # LOST's own format: a dict of numpy arrays (load files you trust)
        if not isinstance(data, dict):
            raise ValueError(f"'{path}' is not LOST's pickle of boxes (image name -> [x0, y0, x1, y1])")
        for name, value in data.items():
            key = str(name)
            position = by_name.get(key, by_name.get(PurePosixPath(key).name, by_id.get(key)))
            if position is None:
                raise ValueError(f"'{path}': image '{key}' is not in the split")
            for box in np.asarray(value, dtype=np.float64).reshape(-1, 4):
                add(position, box, 1.0)
    else:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "annotations" in data:
            gt_like = {"images": [{"id": i, "file_name": str(r["file_name"])} for i, r in enumerate(records)]}
            mapping = match_image_ids(gt_like, data["images"]) if "images" in data else None
            anns = data["annotations"]
        elif isinstance(data, list):
            mapping, anns = None, data
        else:
            raise ValueError(f"'{path}' is neither a COCO results list nor a COCO JSON with 'annotations'")
        for ann in anns:
            position = mapping[ann["image_id"]] if mapping is not None else by_id.get(ann["image_id"])
            if position is None:
                raise ValueError(f"'{path}': image id {ann['image_id']!r} is not in the split")
            x, y, w, h = ann["bbox"]
            add(position, [x, y, x + w, y + h], ann.get("score", 1.0))
    return ({k: np.asarray(v) for k, v in boxes.items()}, {k: np.asarray(v) for k, v in scores.items()})
