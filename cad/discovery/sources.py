"""Input images of the discovery pipeline: listing (a folder or a registered split), sharding, reading."""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from cad.errors import UserError

# Errors PIL raises on a truncated, corrupt or non-image file (UnidentifiedImageError is an OSError).
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError)

# EXIF orientations (5-8) that transpose the image: Detectron2's read_image swaps width and height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass(frozen=True)
class ImageRecord:
    """One input image: its COCO id, its `file_name` as written to the JSON, and the path read."""

    image_id: int
    file_name: str
    path: str


class ImageDirError(UserError, NotADirectoryError):
    """An image folder that is not a folder (one line for the user)."""


def list_image_dir(root: Path) -> List[ImageRecord]:
    """Every image file under `root` (recursively), sorted by relative path; ids 1..N in that order.

    `file_name` is the path relative to `root` (POSIX separators), so the JSON can be registered
    with `root` as its image folder. Raises `ImageDirError` (a NotADirectoryError) when `root` is
    not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageDirError(f"--images: '{root}' is not a directory")
    names = []
    for folder, _, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        names += [(rel / f).as_posix() for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    names.sort()
    return [ImageRecord(i + 1, name, str(root / name)) for i, name in enumerate(names)]


def image_size(path: str) -> Tuple[int, int]:
    """(height, width) of the image at `path` as Detectron2's `read_image` returns it (EXIF
    orientation applied), read from the file header only. Raises one of `UNREADABLE_IMAGE_ERRORS`."""
    with Image.open(path) as im:
        width, height = im.size
        if im.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return height, width


def list_dataset(name: str) -> List[ImageRecord]:
    """The images of a registered split, in the split's order.

    Ids are the split's integer `image_id`s (so the output matches its ground truth), else 1..N;
    `file_name` is relative to the split's `image_root` metadata when the file lies under it.
    """
    dicts = DatasetCatalog.get(name)
    image_root = MetadataCatalog.get(name).get("image_root")
    int_ids = all(isinstance(d.get("image_id"), (int, np.integer)) for d in dicts)
    records = []
    for i, d in enumerate(dicts):
        path = d["file_name"]
        file_name = path
        if image_root and Path(path).resolve().is_relative_to(Path(image_root).resolve()):
            file_name = Path(path).resolve().relative_to(Path(image_root).resolve()).as_posix()
        records.append(ImageRecord(int(d["image_id"]) if int_ids else i + 1, file_name, path))
    return records


def parse_shard(text: str) -> Tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N; raises ValueError with a one-line reason."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be I/N with integers, e.g. 0/4 (got '{text}')") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return index, count


def shard_range(num_items: int, shard: int, num_shards: int) -> range:
    """The contiguous block of `range(num_items)` that shard `shard` of `num_shards` owns."""
    return range(num_items * shard // num_shards, num_items * (shard + 1) // num_shards)


def read_rgb(path: str) -> np.ndarray:
    """The image at `path` as RGB uint8 (H, W, 3), EXIF orientation applied (as Detectron2 loads it).

    Raises one of `UNREADABLE_IMAGE_ERRORS` for a missing, truncated or corrupt file.
    """
    return np.array(read_image(path, format="RGB"))  # a writable copy (PIL arrays are read-only)
