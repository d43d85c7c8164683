"""Test scaffolding for the pipeline tests: a cheap deterministic discovery method and tiny images.

`GridMethod` ("test_grid") follows the `cad.discovery.method` contract: stage 1 average-pools the
grey image to an 8x8 grid; stage 2 marks the grid cells brighter than the grid mean, upsamples them
(nearest) to the original size and returns that mask with its box. It is not a product method.
"""
import os
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

from cad.utils.masks import encode_mask
from cad.discovery.method import DISCOVERY_METHODS, DiscoveryImage, MethodOptions, register_method

GRID = 8


class GridMethod:
    """The fake method; `fail_on` (class attribute) makes stage 1/2 raise on that file name, and
    "exit" makes the (worker) process die there, as a killed worker does."""

    stage1_calls: List[str] = []
    fail_on: Dict[str, Optional[str]] = {"1": None, "2": None, "exit": None}

    def __init__(self, options: MethodOptions):
        self.options = options

    def stage1(self, images: List[DiscoveryImage]) -> List[Dict[str, np.ndarray]]:
        out = []
        for im in images:
            if GridMethod.fail_on["1"] == im.file_name:
                raise KeyboardInterrupt(f"simulated kill in stage 1 at {im.file_name}")
            GridMethod.stage1_calls.append(im.file_name)
            grey = im.image.astype(np.float32).mean(axis=2)
            out.append({"grid": cv2.resize(grey, (GRID, GRID), interpolation=cv2.INTER_AREA)})
        return out

    def stage2(self, image: DiscoveryImage, arrays: Dict[str, np.ndarray]) -> List[Dict]:
        if GridMethod.fail_on["2"] == image.file_name:
            raise KeyboardInterrupt(f"simulated kill in stage 2 at {image.file_name}")
        if GridMethod.fail_on["exit"] == image.file_name:
            os._exit(1)
        grid = arrays["grid"]
        cells = (grid > grid.mean()).astype(np.uint8)
        if not cells.any():
            return []
        h, w = image.image.shape[:2]
        mask = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
        ann = {"bbox": box, "score": float(cells.mean())}
        if self.options.crf:  # "crf" here only switches masks on, to exercise both output kinds
            ann["segmentation"] = encode_mask(mask)
        return [ann]


if "test_grid" not in DISCOVERY_METHODS:
    register_method("test_grid")(GridMethod)


def make_images(folder: Path, sizes, corrupt=()) -> List[str]:
    """Write PNGs of the given (h, w) sizes as img_000.png, ...; names in `corrupt` get garbage bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (h, w) in enumerate(sizes):
        name = f"img_{i:03d}.png"
        image = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        image[y0 : y0 + h // 3, x0 : x0 + w // 3] += 150  # a bright "object"
        if name in corrupt:
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        else:
            cv2.imwrite(str(folder / name), image[:, :, ::-1])
        names.append(name)
    return names
