"""Run any cad model on arbitrary images (tools/demo.py, Detectron2's and CutLER's demo convention).

Image models (R-CNN detectors, Mask2Former, the LOST/MaskCut/VoteCut meta-architectures): every
readable input image goes through the model's own test-time mapping (the trainer's test loader on
a temporary split of the inputs), then one PNG per image (Detectron2 `Visualizer`, predictions with
score >= the threshold) and one COCO JSON (`images` with id/file_name/height/width in input order,
ids 0, 1, ...; `annotations` with bbox XYWH, score, RLE `segmentation` for mask models; the format
of cad's pseudo-label JSONs, which leave out boxes under 1 px and empty masks) are written, atomically.

Motion models (DIOD): the input is a folder of frames (sorted by name), cut into consecutive clips
of `CAD.MOTION.CLIP_LENGTH`; one PNG strip per clip (frames, slot masks) is written.

Unreadable images are skipped, warned about and counted (`DemoSummary.skipped`). Weights:
`MODEL.WEIGHTS` by cad's loading rule (`cad.checkpoint.loader`); device: `MODEL.DEVICE`.
"""
import glob
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from cad.config import ConfigError
from cad.data.mapper import is_readable_image
from cad.data.self_training import prediction_annotations
from cad.discovery.export import image_entry, write_coco_json
from cad.discovery.sources import IMAGE_EXTENSIONS, image_size
from cad.engine.predict import build_loaded_model
from cad.engine.trainer import TRAINER_REGISTRY
from cad.utils.io import atomic_write_png

logger = logging.getLogger(__name__)

__all__ = ["DemoSummary", "collect_images", "run_demo", "RESULTS_FILE"]
# The COCO JSON written next to the PNGs.
RESULTS_FILE = "demo_results.json"
MOTION_ARCHS = ("DIOD", "DIOD3D", "XMOD")


@dataclass
class DemoSummary:
    """What a demo run wrote: PNG paths, the JSON (image models), unreadable inputs skipped."""

    pngs: List[Path] = field(default_factory=list)
    results: Path = None
    skipped: List[str] = field(default_factory=list)


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Files named by `inputs` (files, glob patterns, folders: their image files), sorted, each once.

    Raises `ConfigError` when an input matches nothing."""
    found: List[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found += [str(p) for p in sorted(Path(spec).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
        elif os.path.isfile(spec):
            found.append(spec)
        else:
            matches = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not matches:
                raise ConfigError(f"--input '{spec}' matches no file")
            found += matches
    return list(dict.fromkeys(found))


def _readable(files: Sequence[str], summary: DemoSummary) -> List[str]:
    ok = []
    for f in files:
        if is_readable_image(f):
            ok.append(f)
        else:
            summary.skipped.append(f)
            logger.warning("Skipping unreadable image '%s' (%d skipped so far)", f, len(summary.skipped))
    return ok


def _register_inputs(files: Sequence[str], metadata_from: str) -> str:
    """A temporary split of `files` (image ids = their index) with the config's test metadata."""
    name = f"cad_demo_{uuid.uuid4().hex[:8]}"
    records = []
    for i, f in enumerate(files):
        height, width = image_size(f)  # the file header (EXIF orientation applied), as read_image gives it
        records.append({"file_name": f, "image_id": i, "height": height, "width": width})
    DatasetCatalog.register(name, lambda: records)
    classes = getattr(MetadataCatalog.get(metadata_from), "thing_classes", None) if metadata_from else None
    MetadataCatalog.get(name).set(thing_classes=list(classes or ["object"]))
    return name


def _run_images(cfg, model, files: List[str], out: Path, threshold: float, summary: DemoSummary) -> None:
    name = _register_inputs(files, cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    try:
        loader = TRAINER_REGISTRY.get(cfg.CAD.TRAINER).build_test_loader(cfg, name)
        metadata = MetadataCatalog.get(name)
        images, predictions = [], []
        with torch.no_grad():
            for inputs in tqdm(loader, total=len(files), desc="demo", unit="image"):
                for inp, output in zip(inputs, model(inputs)):
                    instances = output["instances"].to("cpu")
                    instances = instances[instances.scores >= threshold]
                    height, width = instances.image_size
                    images.append(image_entry(inp["image_id"], inp["file_name"], height, width))
                    predictions += instances_to_coco_json(instances, inp["image_id"])
                    rgb = read_image(inp["file_name"], format="RGB")
                    drawn = Visualizer(rgb, metadata=metadata).draw_instance_predictions(instances).get_image()
                    path = out / (Path(inp["file_name"]).stem + f"_{inp['image_id']}.png")
                    atomic_write_png(path, drawn)
                    summary.pngs.append(path)
        annotations = prediction_annotations(predictions, {im["id"]: im for im in images}, threshold)
        summary.results = out / RESULTS_FILE
        write_coco_json(summary.results, images, annotations)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _run_frames(cfg, model, frames: List[str], out: Path, summary: DemoSummary) -> None:
    from cad.data.motion import _video_dict, split_into_clips
    from cad.modeling.motion import RANGE_ARCHS
    from cad.utils.visualize_motion import predict_clip_dicts, write_strips

    if cfg.MODEL.META_ARCHITECTURE in RANGE_ARCHS:
        raise ConfigError("the xMOD models need depth or LiDAR per frame: use a DIOD config on frames, or "
                          "tools/visualize_motion.py on a registered split")
    length = cfg.CAD.MOTION.CLIP_LENGTH
    clips = split_into_clips([_video_dict(Path(frames[0]).parent.name, [Path(f) for f in frames], None, None)], length)
    if not clips:
        raise ConfigError(f"{len(frames)} readable frames: a clip needs CAD.MOTION.CLIP_LENGTH = {length}")
    if len(frames) % length:
        logger.warning("The last %d frames do not fill a clip of %d and are left out", len(frames) % length, length)
    results = predict_clip_dicts(model, cfg, tqdm(clips, desc="demo", unit="clip"))
    summary.pngs += write_strips(results, out)


def run_demo(cfg, inputs: Sequence[str], output: str, threshold: float = 0.5) -> DemoSummary:
    """Run the model of `cfg` (weights MODEL.WEIGHTS) on `inputs` and write under `output` (module
    docstring). Raises `ConfigError` (one line) for inputs that match nothing or are all unreadable,
    and for weights that cannot be loaded."""
    summary = DemoSummary()
    files = _readable(collect_images(inputs), summary)
    if not files:
        raise ConfigError(f"no readable image in --input ({len(summary.skipped)} unreadable)")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model = build_loaded_model(cfg)
    if cfg.MODEL.META_ARCHITECTURE in MOTION_ARCHS:
        _run_frames(cfg, model, files, out, summary)
    else:
        _run_images(cfg, model, files, out, threshold, summary)
    return summary
