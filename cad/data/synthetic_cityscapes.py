"""A generated split in the Cityscapes layout, read by Detectron2's own Cityscapes loader.

`synthetic_cityscapes_instance_seg_{train,val}` are written on first use under
`$DETECTRON2_DATASETS/synthetic/cityscapes/` exactly as Cityscapes is laid out
(`leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` and, in `gtFine/<split>/<city>/`,
`_gtFine_polygons.json` plus the `_gtFine_instanceIds.png` / `_gtFine_labelIds.png` that
cityscapesscripts renders from the polygons). They load through
`detectron2.data.datasets.load_cityscapes_instances` and are scored by `CityscapesInstanceEvaluator`,
so the whole Cityscapes path (lists, SSL.PERCENTAGE, mappers, evaluation) runs in seconds on a CPU.

Each image shows sky and road and up to 4 polygons of the 8 Cityscapes instance classes (each class
with its own tint), drawn back to front; the polygons JSON lists them in drawing order, as
Cityscapes does (later polygons cover earlier ones).
"""
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from cad.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_png, write_once

logger = logging.getLogger(__name__)

# Cityscapes' instance classes in Detectron2's contiguous order (labels with hasInstances and
# not ignoreInEval, cityscapesscripts/helpers/labels.py).
INSTANCE_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
CITIES = ("alpha", "beta")
# Cityscapes' instance evaluation ignores ground-truth instances under 100 pixels (minRegionSizes).
MIN_VISIBLE_AREA = 150


@dataclass(frozen=True)
class CityscapesLayoutSplit:
    """`num_images` images of `height`x`width` for the Cityscapes split folder `split`."""

    split: str
    num_images: int
    seed: int
    height: int = 64
    width: int = 128


SYNTHETIC_CITYSCAPES = {
    "synthetic_cityscapes_instance_seg_train": CityscapesLayoutSplit("train", num_images=12, seed=40_000),
    "synthetic_cityscapes_instance_seg_val": CityscapesLayoutSplit("val", num_images=4, seed=50_000),
}


def image_stem(index: int) -> str:
    """`<city>_<seq>_<frame>` of image `index` (cities alternate)."""
    return f"{CITIES[index % len(CITIES)]}_{index:06d}_000019"


def _polygon(rng: np.random.Generator, h: int, w: int) -> List[List[int]]:
    """A random convex-ish polygon (3-7 vertices) of 12-40 % of the image height, in pixels."""
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.25, 0.85) * h
    radius = rng.uniform(0.12, 0.4) * h
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    radii = radius * rng.uniform(0.7, 1.0, size=n)
    xs = np.clip(cx + radii * np.cos(angles), 0, w - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, h - 1)
    return [[int(round(x)), int(round(y))] for x, y in zip(xs, ys)]


def _visible_areas(objects: List[Dict], h: int, w: int) -> List[int]:
    """Pixels of each polygon left visible by the later ones (Cityscapes draws in list order)."""
    import cv2

    canvas = np.full((h, w), -1, np.int32)
    for i, obj in enumerate(objects):
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.asarray(obj["polygon"], np.int32)], 1)
        canvas[mask.astype(bool)] = i
    return [int((canvas == i).sum()) for i in range(len(objects))]


def render_annotation(spec: CityscapesLayoutSplit, index: int) -> Dict:
    """The `_gtFine_polygons.json` content of image `index`: sky and road (no void pixels), then
    the objects; an object left with fewer than MIN_VISIBLE_AREA visible pixels is dropped, so
    every instance counts in the Cityscapes evaluation (it ignores smaller ones) and no prediction
    falls on an ignored region (cityscapesScripts issue #89 crashes on few images otherwise)."""
    rng = np.random.default_rng([spec.seed, index])
    h, w = spec.height, spec.width
    background = [
        {"label": "sky", "polygon": [[0, 0], [w - 1, 0], [w - 1, h // 2], [0, h // 2]]},
        {"label": "road", "polygon": [[0, h // 2], [w - 1, h // 2], [w - 1, h - 1], [0, h - 1]]},
    ]
    objects = [{"label": INSTANCE_CLASSES[int(rng.integers(len(INSTANCE_CLASSES)))], "polygon": _polygon(rng, h, w)}
               for _ in range(int(rng.integers(2, 5)))]
    while objects:
        areas = _visible_areas(objects, h, w)
        if min(areas) >= MIN_VISIBLE_AREA:
            break
        objects.pop(int(np.argmin(areas)))
    return {"imgHeight": h, "imgWidth": w, "objects": background + objects}


def render_image(annotation: Dict, seed: int) -> np.ndarray:
    """RGB (H, W, 3) uint8: noise background, then each polygon filled with its class's tint plus noise."""
    import cv2
    from cityscapesscripts.helpers.labels import name2label

    rng = np.random.default_rng(seed)
    h, w = annotation["imgHeight"], annotation["imgWidth"]
    image = rng.integers(90, 140, size=(h, w, 3)).astype(np.uint8)
    for obj in annotation["objects"]:
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.asarray(obj["polygon"], np.int32)], 1)
        tint = np.asarray(name2label[obj["label"]].color, np.int16)
        noisy = np.clip(tint + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)
        image[mask.astype(bool)] = noisy[mask.astype(bool)]
    return image


def _write_ids_png(path: Path, image) -> None:
    """A PIL id image as a 16-bit (instance ids, as Cityscapes) or 8-bit PNG, atomically."""
    import cv2

    ids = np.asarray(image, dtype=np.int64)
    ok, png = cv2.imencode(".png", ids.astype(np.uint16 if ids.max() > 255 else np.uint8))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, png.tobytes())


def write_cityscapes_split(root: Path, spec: CityscapesLayoutSplit) -> Path:
    """Write the split under `root` (`root/leftImg8bit/<split>`, `root/gtFine/<split>`); returns
    the marker file written last (`root/gtFine/<split>.done`)."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    def write() -> None:
        for index in range(spec.num_images):
            stem, city = image_stem(index), CITIES[index % len(CITIES)]
            annotation = render_annotation(spec, index)
            atomic_write_png(root / "leftImg8bit" / spec.split / city / f"{stem}_leftImg8bit.png",
                             render_image(annotation, spec.seed + index))
            gt = root / "gtFine" / spec.split / city
            parsed = Annotation()
            parsed.fromJsonText(json.dumps(annotation))
            _write_ids_png(gt / f"{stem}_gtFine_instanceIds.png", createInstanceImage(parsed, "ids"))
            _write_ids_png(gt / f"{stem}_gtFine_labelIds.png", createLabelImage(parsed, "ids"))
            atomic_write_json(gt / f"{stem}_gtFine_polygons.json", annotation)
        atomic_write_json(root / "gtFine" / f"{spec.split}.done", {"num_images": spec.num_images, "seed": spec.seed})
        logger.info("Wrote %d Cityscapes-layout images under %s", spec.num_images, root)

    return write_once(root / "gtFine" / f"{spec.split}.done", write)


def register_synthetic_cityscapes(root: Path) -> None:
    """Register the generated splits (Detectron2's Cityscapes loader and metadata)."""
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    # Detectron2's Cityscapes class names (registered with its builtin splits)
    meta = MetadataCatalog.get("cityscapes_fine_instance_seg_train")
    classes = {"thing_classes": meta.thing_classes, "stuff_classes": meta.stuff_classes}
    base = Path(root) / "synthetic" / "cityscapes"
    for name, spec in SYNTHETIC_CITYSCAPES.items():
        image_dir, gt_dir = base / "leftImg8bit" / spec.split, base / "gtFine" / spec.split

        def load(spec=spec, image_dir=image_dir, gt_dir=gt_dir):
            write_cityscapes_split(base, spec)
            return load_cityscapes_instances(str(image_dir), str(gt_dir), from_json=True, to_polygons=True)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(image_dir=str(image_dir), gt_dir=str(gt_dir), evaluator_type="cityscapes_instance", **classes)
