"""Run any cad model on arbitrary images (tools/demo.py, Detectron2's and CutLER's demo convention).

Inputs (`collect_images`): a folder means every image file under it, recursively, sorted by path,
ids 1..N (`list_image_dir`, as `images:DIR` and `tools/discover.py --images DIR`); a file is an
input whatever its name; anything else is a glob pattern. Ids run 1..N over all inputs in order.

Image models (R-CNN detectors, Mask2Former, the LOST/MaskCut/VoteCut meta-architectures): every
readable input image goes through the model's own test-time mapping (the trainer's test loader on
a temporary split of the inputs), then one PNG per image (Detectron2 `Visualizer`, predictions with
score >= the threshold) and one COCO JSON (`images` with id/file_name/height/width in input order;
`annotations` with bbox XYWH, score, RLE `segmentation` for mask models; the format of cad's
pseudo-label JSONs, which leave out boxes under 1 px and empty masks) are written, atomically.
`file_name` is relative to the folder when the input is one folder (the JSON then is what
`tools/discover.py --images DIR` writes for it, trainable as `coco:demo_results.json:DIR`), else the
path as found; `tools/self_training_ann.py` reads the JSON.

Motion models (DIOD): the input is frames; each folder of frames (sorted by path) is one video,
cut into consecutive clips of `CAD.MOTION.CLIP_LENGTH`; one PNG strip per clip (frames, slot masks).

Unreadable images are skipped, warned about and counted (`DemoSummary.skipped`). Weights:
`MODEL.WEIGHTS` by cad's loading rule (`cad.checkpoint.loader`); device: `MODEL.DEVICE`.
"""
import glob
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from cad.config import ConfigError
from cad.data.mapper import is_readable_image
from cad.data.self_training import DEMO_RESULTS_FILE, prediction_annotations
from cad.discovery.export import image_entry, write_coco_json
from cad.discovery.sources import ImageRecord, image_size, list_image_dir
from cad.engine.predict import build_loaded_model
from cad.engine.setup import is_config_key
from cad.engine.trainer import TRAINER_REGISTRY
from cad.utils.io import atomic_write_png

logger = logging.getLogger(__name__)

__all__ = ["DemoSummary", "collect_images", "run_demo", "RESULTS_FILE"]
# The COCO JSON written next to the PNGs.
RESULTS_FILE = DEMO_RESULTS_FILE
MOTION_ARCHS = ("DIOD", "DIOD3D", "XMOD")


@dataclass
class DemoSummary:
    """What a demo run wrote: PNG paths, the JSON (image models), unreadable inputs skipped."""

    pngs: List[Path] = field(default_factory=list)
    results: Path = None
    skipped: List[str] = field(default_factory=list)


def collect_images(inputs: Sequence[str], cfg: Optional[CfgNode] = None) -> List[ImageRecord]:
    """The images named by `inputs` (module docstring: folders recursively, files of any name,
    glob patterns), each once, ids 1..N in input order.

    Raises `ConfigError` when an input matches nothing; when that input is a key of `cfg`, the
    message says that config overrides go after `--opts`."""
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        return list_image_dir(Path(inputs[0]))
    paths: List[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            paths += [r.path for r in list_image_dir(Path(spec))]
        elif os.path.isfile(spec):
            paths.append(spec)
        else:
            matches = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not matches and cfg is not None and is_config_key(cfg, spec):
                raise ConfigError(f"--input '{spec}' matches no file and is a config key: "
                                  f"config overrides go after --opts (--opts {spec} VALUE ...)")
            if not matches:
                raise ConfigError(f"--input '{spec}' matches no file")
            paths += matches
    return [ImageRecord(i, path, path) for i, path in enumerate(dict.fromkeys(paths), start=1)]


def _readable(records: Sequence[ImageRecord], summary: DemoSummary) -> List[ImageRecord]:
    ok = []
    for r in records:
        if is_readable_image(r.path):
            ok.append(r)
        else:
            summary.skipped.append(r.path)
            logger.warning("Skipping unreadable image '%s' (%d skipped so far)", r.path, len(summary.skipped))
    return ok


def _register_inputs(records: Sequence[ImageRecord], metadata_from: str) -> str:
    """A temporary split of `records` (their ids) with the config's test metadata."""
    name = f"cad_demo_{uuid.uuid4().hex[:8]}"
    dicts = []
    for r in records:
        height, width = image_size(r.path)  # the file header (EXIF orientation applied), as read_image gives it
        dicts.append({"file_name": r.path, "image_id": r.image_id, "height": height, "width": width})
    DatasetCatalog.register(name, lambda: dicts)
    classes = getattr(MetadataCatalog.get(metadata_from), "thing_classes", None) if metadata_from else None
    MetadataCatalog.get(name).set(thing_classes=list(classes or ["object"]))
    return name


def _run_images(cfg, model, records: List[ImageRecord], out: Path, threshold: float, summary: DemoSummary) -> None:
    name = _register_inputs(records, cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    file_names = {r.image_id: r.file_name for r in records}
    try:
        loader = TRAINER_REGISTRY.get(cfg.CAD.TRAINER).build_test_loader(cfg, name)
        metadata = MetadataCatalog.get(name)
        images, predictions = [], []
        with torch.no_grad():
            for inputs in tqdm(loader, total=len(records), desc="demo", unit="image"):
                for inp, output in zip(inputs, model(inputs)):
                    instances = output["instances"].to("cpu")
                    instances = instances[instances.scores >= threshold]
                    height, width = instances.image_size
                    images.append(image_entry(inp["image_id"], file_names[inp["image_id"]], height, width))
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


def _run_frames(cfg, model, records: List[ImageRecord], out: Path, summary: DemoSummary) -> None:
    from cad.data.motion import _video_dict, split_into_clips
    from cad.modeling.motion import RANGE_ARCHS
    from cad.utils.visualize_motion import predict_clip_dicts, write_strips

    if cfg.MODEL.META_ARCHITECTURE in RANGE_ARCHS:
        raise ConfigError("the xMOD models need depth or LiDAR per frame: use a DIOD config on frames, or "
                          "tools/visualize_motion.py on a registered split")
    length = cfg.CAD.MOTION.CLIP_LENGTH
    by_folder: Dict[Path, List[Path]] = {}
    for r in records:
        by_folder.setdefault(Path(r.path).parent, []).append(Path(r.path))
    videos = []
    for folder, frames in by_folder.items():
        videos.append(_video_dict(folder.name, frames, None, None))
        if len(frames) % length:
            logger.warning("The last %d frames of %s do not fill a clip of %d and are left out",
                           len(frames) % length, folder, length)
    clips = split_into_clips(videos, length)
    if not clips:
        raise ConfigError(f"no folder has {length} readable frames (CAD.MOTION.CLIP_LENGTH) to fill a clip")
    results = predict_clip_dicts(model, cfg, tqdm(clips, desc="demo", unit="clip"))
    summary.pngs += write_strips(results, out)


def run_demo(cfg, inputs: Sequence[str], output: str, threshold: float = 0.5) -> DemoSummary:
    """Run the model of `cfg` (weights MODEL.WEIGHTS) on `inputs` and write under `output` (module
    docstring). Raises `ConfigError` (one line) for inputs that match nothing or are all unreadable,
    and for weights that cannot be loaded."""
    summary = DemoSummary()
    records = _readable(collect_images(inputs, cfg), summary)
    if not records:
        raise ConfigError(f"no readable image in --input ({len(summary.skipped)} unreadable)")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model = build_loaded_model(cfg)
    if cfg.MODEL.META_ARCHITECTURE in MOTION_ARCHS:
        _run_frames(cfg, model, records, out, summary)
    else:
        _run_images(cfg, model, records, out, threshold, summary)
    return summary
