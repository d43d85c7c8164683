"""Pseudo-classes for discovered objects: LOST+OD's clustering of boxes (or masks) into K groups.

The recipe of valeoai/LOST `cluster_for_OD.py` (LOST, BMVC 2021, Sec. 4.3 "class-aware detection"):

1. per object, the box [x0, y0, x1, y1] rounded with Python's `round` (half to even) is cropped
   from the ImageNet-normalised full image (`img[:, round(y0):round(y1), round(x0):round(x1)]`);
2. the crop is resized to a shorter side of 256 (`transforms.Resize(256, interpolation=3)`
   on a tensor: bicubic, `align_corners=False`, no antialiasing in the torchvision of LOST's
   PyTorch 1.7.1; the longer side is `int(256 * long / short)`);
3. DINO ViT-S/16 forward (its position embedding resized with DINO's own rule, bicubic with
   scale factor (grid + 0.1) / 14; the patch embedding ignores the rows/columns beyond the last
   full patch) -> the CLS token after the final norm, L2-normalised;
4. `scipy.cluster.vq.whiten` (divide each dimension by its standard deviation), L2-normalise
   each row again, `kmeans2(k=20)` (random Gaussian init, 10 iterations) with numpy's global seed
   set to 123 (here: the same stream from `RandomState(123)`, no global state touched).

`cluster_features` is the one implementation of step 4, `crop_features` of steps 1-3;
`cluster_pseudo_labels` runs both on a COCO JSON of pseudo-labels and returns one whose
`category_id` is the cluster (1..K). Masks (VoteCut/MaskCut JSONs) are cropped at the mask's box.

Official behaviour kept: k-means may end with empty clusters (scipy warns and keeps their
centroid); they are counted and reported, and their categories stay in the list. Not copied: the
official script pairs cluster labels with boxes by position after filtering features, which
misaligns them when a crop is filtered out; here every label stays with its annotation. An
object whose rounded box is empty cannot be cropped (the official script would crash); it is
dropped and counted.
"""
import hashlib
import json
import logging
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import scipy.cluster.vq as vq
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cad.backbones.features import normalize_image
from cad.backbones.vit import DINO_INTERPOLATE_OFFSET
from cad.discovery.sources import UNREADABLE_IMAGE_ERRORS, read_rgb
from cad.utils.io import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_ARCH", "CROP_SIZE", "NUM_CLUSTERS", "SEED",
    "ClusterSettings", "ClusterReport", "cluster_features", "crop_box", "resize_shorter_side",
    "crop_features", "annotation_box", "cluster_pseudo_labels", "coco_from_lost_pickle",
]

CLUSTER_ARCH = "dino_vits16"  # cluster_for_OD.py --arch vit_small --patch_size 16
CROP_SIZE = 256  # cluster_for_OD.py: pth_transforms.Resize(256, interpolation=3)
NUM_CLUSTERS = 20  # --nb_clusters 20 (the README's LOST+OD command)
SEED = 123  # --random_seed 123: np.random.seed before kmeans2


def cluster_features(features: np.ndarray, k: int = NUM_CLUSTERS, seed: int = SEED, whiten: bool = True) -> Tuple[np.ndarray, int]:
    """k-means pseudo-classes of L2-normalised features (n, d) -> (labels (n,) int64 in [0, k), empty clusters).

    As cluster_for_OD.py: the features as float32 (the official pickle's dtype), `vq.whiten`,
    rows L2-normalised again, `kmeans2(k)` seeded like `np.random.seed(seed)`. `whiten=False`
    clusters the features as given. The count of clusters left without a member is returned
    (scipy's "One of the clusters is empty" warning is turned into that count).
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty (n, d) array, got shape {x.shape}")
    if len(x) < k:
        raise ValueError(f"cannot make {k} clusters of {len(x)} objects")
    if whiten:
        w = vq.whiten(x)
        x = w / np.linalg.norm(w, axis=1)[:, None]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="One of the clusters is empty")
        _, labels = vq.kmeans2(x, k, seed=np.random.RandomState(seed))
    empty = int(k - len(np.unique(labels)))
    return labels.astype(np.int64), empty


def crop_box(box: Sequence[float]) -> Tuple[int, int, int, int]:
    """[x0, y0, x1, y1] -> integer (x0, y0, x1, y1) with Python's round (half to even), as the reference."""
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    return x0, y0, x1, y1


def resize_shorter_side(image: torch.Tensor, size: int = CROP_SIZE, antialias: bool = False) -> torch.Tensor:
    """(B, C, h, w) -> shorter side `size`, longer `int(size * long / short)`, bicubic (torchvision's
    `Resize(size, interpolation=3)` on tensors; LOST's torchvision had no antialiasing)."""
    h, w = image.shape[-2:]
    if w < h:
        out = (int(size * h / w), size)
    else:
        out = (size, int(size * w / h))
    if out == (h, w):
        return image
    return F.interpolate(image, size=out, mode="bicubic", align_corners=False, antialias=antialias)


@torch.no_grad()
def crop_features(
    model: torch.nn.Module,
    image: np.ndarray,
    boxes: np.ndarray,
    crop_size: int = CROP_SIZE,
    antialias: bool = False,
    device: str = "cpu",
) -> np.ndarray:
    """L2-normalised CLS features (n, C) float32 of the crops `boxes` (n, 4) [x0, y0, x1, y1] of the
    RGB uint8 image (H, W, 3), each cropped from the normalised image, resized (shorter side
    `crop_size`) and run through the ViT `model` (crops of equal size share a forward pass).

    Raises ValueError for a box whose rounded crop is empty.
    """
    patch = int(model.patch_embed.patch_size[0])
    normalized = normalize_image(image)
    crops: List[torch.Tensor] = []
    for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x0, y0, x1, y1 = crop_box(box)
        crop = normalized[:, max(y0, 0) : y1, max(x0, 0) : x1]
        if crop.shape[1] < 1 or crop.shape[2] < 1:
            raise ValueError(f"box {box.tolist()} is empty once rounded")
        crop = resize_shorter_side(crop[None], crop_size, antialias)[0]
        h, w = (crop.shape[1] // patch) * patch, (crop.shape[2] // patch) * patch
        crops.append(crop[:, :h, :w])  # the stride-p patch embedding never sees the rest
    out = torch.zeros(len(crops), model.embed_dim)
    groups: Dict[Tuple[int, int], List[int]] = defaultdict(list)
    for i, crop in enumerate(crops):
        groups[tuple(crop.shape[-2:])].append(i)
    for members in groups.values():
        batch = torch.stack([crops[i] for i in members]).to(device)
        cls = model.forward_features(batch)[:, 0].float().cpu()
        out[members] = F.normalize(cls, dim=1, p=2)
    return out.numpy()


def annotation_box(ann: Dict, height: int, width: int) -> np.ndarray:
    """[x0, y0, x1, y1] of an annotation: its mask's box when it has a `segmentation`, else its bbox."""
    seg = ann.get("segmentation")
    if seg:
        if isinstance(seg, list):
            rle = mask_util.merge(mask_util.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):
            rle = mask_util.frPyObjects(seg, height, width)
        else:
            counts = seg["counts"]
            rle = {"size": seg["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
        x, y, w, h = mask_util.toBbox(rle).tolist()
    else:
        x, y, w, h = ann["bbox"]
    return np.array([x, y, x + w, y + h], dtype=np.float64)


@dataclass(frozen=True)
class ClusterSettings:
    """How objects are clustered (defaults: the official LOST+OD recipe)."""

    k: int = NUM_CLUSTERS
    seed: int = SEED
    whiten: bool = True
    arch: str = CLUSTER_ARCH
    crop_size: int = CROP_SIZE
    antialias: bool = False

    def feature_key(self, weights: Optional[str], source_sha1: str) -> Dict:
        """What the cached features depend on (not k, seed, whiten)."""
        return {"arch": self.arch, "weights": weights or "", "crop_size": self.crop_size,
                "antialias": self.antialias, "source_sha1": source_sha1}


@dataclass
class ClusterReport:
    """Counts of a clustering run: objects clustered, cluster sizes, empty clusters, and what was
    left out (annotations of unreadable images, empty crops)."""

    num_objects: int = 0
    cluster_sizes: List[int] = field(default_factory=list)
    empty_clusters: int = 0
    unreadable_images: int = 0
    dropped_unreadable: int = 0
    dropped_empty_crops: int = 0

    def line(self) -> str:
        return (f"{self.num_objects} objects in {len(self.cluster_sizes)} clusters (sizes {self.cluster_sizes}), "
                f"{self.empty_clusters} empty clusters, {self.dropped_unreadable} objects of {self.unreadable_images} "
                f"unreadable images and {self.dropped_empty_crops} empty crops left out")


def _image_path(entry: Dict, image_root: Optional[Path]) -> str:
    name = Path(entry["file_name"])
    return str(name if name.is_absolute() or image_root is None else Path(image_root) / name)


def _extract_all(
    coco: Dict, model: torch.nn.Module, settings: ClusterSettings, image_root: Optional[Path], device: str, report: ClusterReport
) -> Tuple[np.ndarray, np.ndarray]:
    """(annotation ids (n,), features (n, C)) of every croppable annotation, in annotation order."""
    by_image: Dict = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    ids: List[int] = []
    feats: List[np.ndarray] = []
    for entry in tqdm(coco["images"], desc="cluster: crop features", unit="img"):
        anns = by_image.get(entry["id"], [])
        if not anns:
            continue
        try:
            image = read_rgb(_image_path(entry, image_root))
        except UNREADABLE_IMAGE_ERRORS as e:
            logger.warning("Skipping unreadable image '%s' (%s: %s)", entry["file_name"], type(e).__name__, e)
            report.unreadable_images += 1
            report.dropped_unreadable += len(anns)
            continue
        height, width = image.shape[:2]
        kept, boxes = [], []
        for ann in anns:
            box = annotation_box(ann, height, width)
            x0, y0, x1, y1 = crop_box(box)
            if min(x1, width) - max(x0, 0) < 1 or min(y1, height) - max(y0, 0) < 1:
                report.dropped_empty_crops += 1
                continue
            kept.append(ann["id"])
            boxes.append(box)
        if kept:
            ids += kept
            feats.append(crop_features(model, image, np.stack(boxes), settings.crop_size, settings.antialias, device))
    if report.dropped_empty_crops:
        logger.warning("%d objects have an empty crop once rounded: left out", report.dropped_empty_crops)
    return np.asarray(ids, dtype=np.int64), (np.concatenate(feats) if feats else np.zeros((0, model.embed_dim), np.float32))


def _load_cache(path: Path, key: Dict) -> Optional[Tuple[np.ndarray, np.ndarray, Dict]]:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(data["meta"].tobytes().decode())
        if meta["key"] != key:
            logger.info("Feature cache %s was made with other settings: recomputing", path)
            return None
        return data["ann_ids"], data["features"], meta["report"]


def _save_cache(path: Path, key: Dict, ann_ids: np.ndarray, features: np.ndarray, report: ClusterReport) -> None:
    import io

    meta = json.dumps({"key": key, "report": asdict(report)}).encode()
    buffer = io.BytesIO()
    np.savez(buffer, ann_ids=ann_ids, features=features, meta=np.frombuffer(meta, dtype=np.uint8))
    atomic_write_bytes(path, buffer.getvalue())


def cluster_pseudo_labels(
    coco: Dict,
    model_factory,
    settings: ClusterSettings = ClusterSettings(),
    weights: Optional[str] = None,
    image_root: Optional[Path] = None,
    device: str = "cpu",
    features_cache: Optional[Path] = None,
) -> Tuple[Dict, ClusterReport]:
    """The COCO dict `coco` of pseudo-labels with `category_id` = cluster + 1 (1..K), a `categories`
    list of the K clusters and the clustering in `info["clustering"]`; and its `ClusterReport`.

    `model_factory()` builds the ViT (called only when features must be computed); images are
    read from `file_name` (relative to `image_root` when given). `features_cache`: an .npz that
    stores the crop features (reused when arch, weights, crop settings and input are the same),
    so that another k or seed does not run the ViT again.
    """
    report = ClusterReport()
    source_sha1 = hashlib.sha1(json.dumps([coco["images"], coco["annotations"]], sort_keys=True).encode()).hexdigest()
    key = settings.feature_key(weights, source_sha1)
    cached = _load_cache(Path(features_cache), key) if features_cache else None
    if cached is not None:
        ann_ids, features, saved = cached
        report = ClusterReport(**{**saved, "cluster_sizes": [], "num_objects": 0, "empty_clusters": 0})
        logger.info("Loaded %d crop features from %s", len(ann_ids), features_cache)
    else:
        model = model_factory()
        model.interpolate_offset = DINO_INTERPOLATE_OFFSET
        ann_ids, features = _extract_all(coco, model, settings, image_root, device, report)
        if features_cache:
            _save_cache(Path(features_cache), key, ann_ids, features, report)
    labels, report.empty_clusters = cluster_features(features, settings.k, settings.seed, settings.whiten)
    report.num_objects = len(labels)
    report.cluster_sizes = np.bincount(labels, minlength=settings.k).tolist()
    if report.empty_clusters:
        logger.warning("k-means left %d of %d clusters empty (as scipy's kmeans2 may)", report.empty_clusters, settings.k)
    cluster_of = dict(zip(ann_ids.tolist(), labels.tolist()))
    annotations = [{**ann, "category_id": cluster_of[ann["id"]] + 1} for ann in coco["annotations"] if ann["id"] in cluster_of]
    info = dict(coco.get("info", {}))
    info["clustering"] = {**asdict(settings), "weights": weights or "", **asdict(report)}
    out = {**coco, "info": info, "annotations": annotations,
           "categories": [{"id": i + 1, "name": f"cluster{i + 1}"} for i in range(settings.k)]}
    return out, report


def coco_from_lost_pickle(path: Path, dataset: str) -> Dict:
    """A pseudo-label COCO dict of LOST's pickle of boxes (main_lost.py preds.pkl, the released
    LOST_VOC07.pkl: image name -> [x0, y0, x1, y1]) on the registered split `dataset`: image ids
    1..N in the split's order, file names as the split's (absolute), score 1."""
    from detectron2.data import DatasetCatalog

    from cad.evaluation.prediction_files import load_prediction_boxes

    if dataset not in DatasetCatalog.list():
        raise ValueError(f"dataset '{dataset}' is not registered")
    records = DatasetCatalog.get(dataset)
    boxes, _ = load_prediction_boxes(Path(path), records)
    images, annotations = [], []
    for i, r in enumerate(records, start=1):
        images.append({"id": i, "file_name": str(r["file_name"]), "height": int(r["height"]), "width": int(r["width"])})
        for x0, y0, x1, y1 in boxes.get(r["image_id"], np.zeros((0, 4))).tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0, "score": 1.0})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
