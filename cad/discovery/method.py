"""The contract between discovery methods (LOST, MaskCut, VoteCut) and the pipeline.

The pipeline (`cad/discovery/pipeline.py`) runs every method in two stages:

- stage 1 (GPU when present, batched): `method.stage1(images)` runs the ViT(s) and returns, per
  image, a dict of numpy arrays (features, eigenvectors, ...) that the pipeline stores per shard;
- stage 2 (CPU, `--workers` processes): `method.stage2(image, arrays)` turns one image's arrays
  into COCO annotations (category_id 1, bbox [x, y, w, h] in original pixels, score, and for
  mask methods `segmentation` as compressed RLE at the original size).

Methods register themselves with `@register_method(name)` under the name used by
`tools/discover.py {lost,maskcut,votecut}` and by the meta-architectures.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Protocol

import numpy as np

# name ("lost", "maskcut", "votecut") -> class following `DiscoveryMethod`.
DISCOVERY_METHODS: Dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator adding a method to `DISCOVERY_METHODS` under `name`."""

    def register(cls: type) -> type:
        if name in DISCOVERY_METHODS:
            raise KeyError(f"discovery method '{name}' is already registered")
        DISCOVERY_METHODS[name] = cls
        return cls

    return register


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
