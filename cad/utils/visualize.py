"""PNG visualisations with Detectron2's `Visualizer`: predictions or (pseudo-)labels on images."""
import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from cad.utils.io import atomic_write_png

logger = logging.getLogger(__name__)


def _as_record_annotations(results: List[Dict], score_thresh: float) -> List[Dict]:
    """COCO result/annotation entries -> Detectron2 annotation dicts for `draw_dataset_dict`."""
    anns = []
    for r in results:
        if r.get("score", 1.0) < score_thresh:
            continue
        ann = {"bbox": r["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
        if "segmentation" in r:
            ann["segmentation"] = r["segmentation"]
        anns.append(ann)
    return anns


def draw_image(record: Dict, annotations: List[Dict], metadata, scale: float = 1.0) -> np.ndarray:
    """Draw `annotations` (Detectron2 dicts) on the record's image; returns RGB (H, W, 3) uint8."""
    image = read_image(record["file_name"], format="RGB")
    vis = Visualizer(image, metadata=metadata, scale=scale)
    return vis.draw_dataset_dict({**record, "annotations": annotations}).get_image()


def render_predictions(
    dataset_name: str,
    results: Union[str, List[Dict]],
    out_dir: str,
    num_images: int = 8,
    score_thresh: float = 0.5,
    with_ground_truth: bool = True,
    image_ids: Optional[List] = None,
) -> List[str]:
    """Write PNGs of COCO-format results on images of `dataset_name`.

    `results`: entries (image_id, bbox XYWH, score, optional RLE segmentation), or the path of a
    JSON holding a results list (predictions) or a full COCO JSON (pseudo-labels). With
    `with_ground_truth` and annotations in the split, each PNG shows the ground truth (left) next
    to the results (right). Returns the written paths.
    """
    if isinstance(results, str):
        with open(results) as f:
            results = json.load(f)
    if isinstance(results, dict):  # a full COCO JSON (pseudo-labels) rather than a results list
        results = results["annotations"]
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    records = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    if image_ids is not None:
        wanted = set(image_ids)
        records = [r for r in records if r["image_id"] in wanted]
    written = []
    for record in tqdm(records[:num_images], desc="visualize", leave=False):
        panel = draw_image(record, _as_record_annotations(by_image[record["image_id"]], score_thresh), metadata)
        if with_ground_truth and record.get("annotations"):
            gt = draw_image(record, record["annotations"], metadata)
            panel = np.concatenate([gt, panel], axis=1)
        written.append(_write(panel, record, out_dir))
    logger.info("Wrote %d PNGs to %s", len(written), out_dir)
    return written


def render_ground_truth(dataset_name: str, out_dir: str, num_images: int = 8) -> List[str]:
    """Write PNGs of the ground-truth annotations of the first `num_images` of a split."""
    metadata = MetadataCatalog.get(dataset_name)
    records = DatasetCatalog.get(dataset_name)[:num_images]
    return [_write(draw_image(r, r.get("annotations", []), metadata), r, out_dir) for r in records]


def _write(panel: np.ndarray, record: Dict, out_dir: str) -> str:
    path = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(record['file_name']))[0]}.png")
    atomic_write_png(path, panel)
    return path
