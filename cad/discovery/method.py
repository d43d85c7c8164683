"""The contract between discovery methods (LOST, MaskCut, VoteCut) and the pipeline.

The pipeline (`cad/discovery/pipeline.py`) runs every method in two stages:

- stage 1 (GPU when present, batched): `method.stage1(images)` runs the ViT(s) and returns, per
  image, a dict of numpy arrays (features, eigenvectors, ...) that the pipeline stores per shard;
- stage 2 (CPU, `--workers` processes): `method.stage2(image, arrays)` turns one image's arrays
  into COCO annotations (category_id 1, bbox [x, y, w, h] in original pixels, score, and for
  mask methods `segmentation` as compressed RLE at the original size).

Methods register themselves in `DISCOVERY_METHODS` under the name used by
`tools/discover.py {lost,maskcut,votecut}` and by the meta-architectures.
"""
from dataclasses import dataclass
from typing import Dict, List, Protocol

import numpy as np
from detectron2.utils.registry import Registry

DISCOVERY_METHODS = Registry("CAD_DISCOVERY_METHOD")
DISCOVERY_METHODS.__doc__ = "Discovery methods (classes following `DiscoveryMethod`), by lower-case name."


@dataclass
class DiscoveryImage:
    """One input image: `image` is RGB uint8 (H, W, 3) at the original size."""

    image_id: int
    file_name: str
    image: np.ndarray


class DiscoveryMethod(Protocol):
    """What the pipeline calls; see the module docstring."""

    def stage1(self, images: List[DiscoveryImage]) -> List[Dict[str, np.ndarray]]:
        ...

    def stage2(self, image: DiscoveryImage, arrays: Dict[str, np.ndarray]) -> List[Dict]:
        ...
